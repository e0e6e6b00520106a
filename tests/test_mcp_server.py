"""The MCP server driven by the official SDK's client, over stdio (``aios-memory serve --standalone``:
MiniLM, a seeded tiny CLIP) and in process (scoped stores). Beyond the answers: exact schemas, no prompts,
no file read outside allowed directories, no media bytes from `sql` by default, no server paths."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aios_memory_clip.provider import ClipProvider
from aios_memory_converters.clip import convert_clip
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from test_clip_model import TINY, make_clip_folder, real_images

from aios_memory import MemoryStore
from aios_memory.mcp_server import SQL_TIMEOUT, Served, build_server
from aios_memory.scope import Scope

FACTS = {
    "cat": ("The user's cat is called Miso", "assistant", {"kind": "fact", "tags": ["pet", 1]}),
    "flight": ("Flight to Tokyo on April 3", "assistant", {"kind": "travel"}),
    "dentist": ("Dentist appointment on March 14 at 10:30", "assistant", {"kind": "health"}),
    "other": ("The other user's cat is called Tom", "someone-else", {"kind": "fact"}),
}
TOOLS = {"remember", "recall", "forget", "sql", "classify_image", "history"}
LABELS = ["cat", "rocket", "cup of coffee"]
TEXT_B64 = base64.b64encode(b"plain text, not an image").decode()
MEDIA = ["base64(media)", "to_base64(media)", "hex(media)", "CAST(media AS VARCHAR)", "i.media", "*, media"]
MEDIA_SQL = [f"SELECT {e} FROM image_memories AS i" for e in MEDIA] + ["FROM read_parquet('**/*.parquet')"]


@pytest.fixture(scope="module")
def homes(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two model homes (text + a seeded tiny CLIP; text only), real photos in an allowed directory
    (no extensions: the server sniffs the bytes), a file outside it and a symlink out of it."""
    root = tmp_path_factory.mktemp("mcp")
    for name in ("clip", "text"):
        shutil.copytree(model_home / "models" / "text", root / name / "models" / "text")
    make_clip_folder(root / "hf", TINY, seed=11)
    weights = convert_clip(root / "hf", root / "clip" / "models" / "clip")
    images, allowed = real_images(), root / "photos"
    allowed.mkdir()
    for name in ("chelsea", "rocket", "coffee"):
        (allowed / f"{name}.img").write_bytes(images[name])
    (root / "secret.img").write_bytes(images["coffee"])
    (allowed / "link.img").symlink_to(root / "secret.img")
    return {"root": root, "clip": root / "clip", "text": root / "text", "clip_dir": weights.parent}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@contextlib.asynccontextmanager
async def stdio_session(store: Path, home: Path, errlog: Path, *options: str) -> AsyncIterator[ClientSession]:
    MemoryStore(store)  # `serve` refuses a location that holds no store (this opens or creates one)
    args = ["-m", "aios_memory", "serve", "--standalone", "--store", str(store), *options]
    env = {**os.environ, "AIOS_MEMORY_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    params = StdioServerParameters(command=sys.executable, args=args, env=env)
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=120) as session:
                session.init = await session.initialize()  # type: ignore[attr-defined]
                yield session


async def call(session: Any, tool: str, **args: Any) -> Any:
    result = await session.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {result.content[0].text}"
    assert json.loads(result.content[0].text) == result.structured_content  # text and structured agree
    return result.structured_content


async def call_error(session: Any, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return result.content[0].text


async def read_json(session: Any, uri: str) -> Any:
    result = await session.read_resource(uri)
    assert result.contents[0].mime_type == "application/json"
    return json.loads(result.contents[0].text)


def schema_problems(node: Any, where: str, inputs: bool) -> list[str]:
    """What MCP Inspector --strict would flag: empty ``{}`` schemas, arrays without typed items,
    properties without a type or a description; walked recursively through every subschema."""
    if not isinstance(node, dict):
        return []
    out = [] if node else [f"{where}: empty schema {{}}"]
    if node and not any(key in node for key in ("type", "anyOf", "oneOf", "$ref", "enum", "const")):
        out.append(f"{where}: no type")
    if node.get("type") == "array" and not node.get("items"):
        out.append(f"{where}: array without typed items")
    for name, prop in node.get("properties", {}).items():
        branches = prop.get("anyOf", [])
        nullable = len(branches) == 2 and {"type": "null"} in branches  # results only: T or null
        if ("type" not in prop and "$ref" not in prop and (inputs or not nullable)) or (inputs and branches):
            out.append(f"{where}/properties/{name}: no single type")
        out += [f"{where}/properties/{name}: a type array"] * isinstance(prop.get("type"), list)
        out += [f"{where}/properties/{name}: no description"] * ("description" not in prop)
    for key, value in node.items():  # every subschema: of properties and $defs, in lists, or alone
        named = value.items() if key in ("properties", "$defs") else None
        children = named or (enumerate(value) if isinstance(value, list) else [("", value)])
        out += [p for sub, child in children for p in schema_problems(child, f"{where}/{key}/{sub}", inputs)]
    return out


def test_tool_schemas_are_exact_and_there_are_no_prompts(store):
    async def scenario() -> dict[str, Any]:
        async with Client(build_server(store)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            with pytest.raises(MCPError):
                await client.session.list_prompts()
            return {"tools": tools, "caps": client.server_capabilities}

    out = asyncio.run(scenario())
    tools, caps = out["tools"], out["caps"]
    assert set(tools) == TOOLS and caps.prompts is None and caps.tools and caps.resources
    problems = []
    for name, tool in tools.items():
        problems += schema_problems(tool.input_schema, f"{name}.input", inputs=True)
        assert tool.output_schema, name
        problems += schema_problems(tool.output_schema, f"{name}.output", inputs=False)
    assert problems == []
    recall, sql = (tools[name].input_schema["properties"] for name in ("recall", "sql"))
    assert recall["modality"]["enum"] == ["text", "image", "audio", "video"]
    assert recall["order"]["enum"] == ["score", "newest"]
    assert [recall["k"]["minimum"], recall["k"]["maximum"], sql["max_rows"]["maximum"]] == [1, 100, 1000]
    scalars = ["string", "integer", "number", "boolean", "null"]
    assert [b["type"] for b in sql["params"]["items"]["anyOf"]] == scalars
    assert tools["remember"].input_schema["properties"]["metadata"]["additionalProperties"]["anyOf"]
    forget = tools["forget"].annotations
    assert forget.idempotent_hint and forget.destructive_hint and tools["sql"].annotations.read_only_hint


def test_stdio_remember_recall_sql_forget_resources(homes, tmp_path):
    store_dir, photos, log = tmp_path / "store", homes["root"] / "photos", tmp_path / "server.log"
    photo = b64(photos / "chelsea.img")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with stdio_session(store_dir, homes["clip"], log, "--allow-read", str(photos)) as s:
            assert s.init.capabilities.prompts is None  # type: ignore[attr-defined]
            ids = {}
            for key, (text, ns, meta) in FACTS.items():
                got = await call(s, "remember", content=text, namespace=ns, metadata=meta)
                assert got["modality"] == "text" and len(got["ids"]) == 1
                ids[key] = got["ids"][0]
            out["as_text"] = await call(s, "remember", content=str(photos / "rocket.img"), namespace="paths")
            ids["chelsea"] = (await call(s, "remember", data=photo, filename="chelsea.png"))["ids"][0]
            ids["rocket"] = (await call(s, "remember", path=str(photos / "rocket.img")))["ids"][0]
            url = "data:image/jpeg;base64," + b64(photos / "coffee.img")
            ids["coffee"] = (await call(s, "remember", data=url, media_type="image/jpeg"))["ids"][0]
            out["ids"] = ids
            pet = {"query": "what pet does the user have?", "namespace": "assistant", "modality": "text"}
            out["pet"] = await call(s, "recall", **pet, k=3)
            out["pet_all"] = await call(s, "recall", query=pet["query"], k=5, modality="text")
            where = "metadata->>'$.kind' = ?"
            out["filtered"] = await call(s, "recall", query="pet?", where=where, params=["travel"])
            out["by_image"] = await call(s, "recall", data=photo, k=3)
            out["by_path"] = await call(s, "recall", path=str(photos / "chelsea.img"), k=1)
            q = "SELECT namespace, count(*) AS n, max(created_at) AS t FROM text_memories GROUP BY 1 ORDER BY 1"
            out["sql"] = await call(s, "sql", query=q)
            out["columns"] = await call(s, "sql", query="SELECT * FROM image_memories", max_rows=2)
            out["media_sql"] = [await call_error(s, "sql", query=q) for q in MEDIA_SQL]
            out["sql_write"] = await call_error(s, "sql", query="DELETE FROM text_memories")
            out["recent"] = await read_json(s, "memory://recent")
            out["recent_image"] = await read_json(s, "memory://recent/image")
            out["one"] = await read_json(s, f"memory://{ids['rocket']}")
            out["stats"] = await read_json(s, "memory://stats")
            out["forget"] = await call(s, "forget", ids=[ids["dentist"]])
            out["forget_again"] = await call(s, "forget", ids=[ids["dentist"], ids["dentist"], "nope"])
            out["history"] = await call(s, "history", id=ids["dentist"])
            out["after"] = await call(s, "recall", query="dentist appointment", namespace="assistant", k=5)
            out["top2"] = await call(s, "recall", **pet, k=2)
            out["newest"] = await call(s, "recall", **pet, k=2, order="newest")
            out["decayed"] = await call(s, "recall", **pet, k=2, half_life_s=1e-3)
            out["min_score"] = await call(s, "recall", **pet, k=5, min_score=0.3)
            with pytest.raises(MCPError, match="no memory with id"):
                await s.read_resource("memory://00000000-0000-0000-0000-000000000000")
            out["classes"] = await call(s, "classify_image", data=photo, labels=LABELS)
            bad = [  # (tool, arguments, what the error says); the last five fail the schema's bounds
                ("classify_image", {"data": TEXT_B64, "labels": LABELS}, "UnsupportedMediaError"),
                ("remember", {"data": photo, "media_type": "audio/wav"}, "does not match"),
                ("remember", {"data": "not base64!"}, "not valid base64"),
                ("remember", {"content": "x", "data": photo}, "exactly one"),
                ("remember", {"content": "   "}, "EmptyContentError"),
                ("recall", {"query": "cat", "k": 0}, "validation error"),
                ("recall", {"query": "cat", "k": 101}, "validation error"),
                ("recall", {"query": "cat", "modality": "smell"}, "validation error"),
                ("recall", {"query": "cat", "order": "oldest"}, "validation error"),
                ("sql", {"query": "SELECT 1", "max_rows": 1001}, "validation error"),
            ]
            out["errors"] = [(await call_error(s, tool, **args), want) for tool, args, want in bad]
        async with stdio_session(store_dir, homes["clip"], log, "--allow-media-sql") as s:
            out["media_allowed"] = await call(
                s, "sql", query="SELECT id, media, base64(media) AS b FROM image_memories"
            )
        return out

    out = asyncio.run(scenario())
    ids = out["ids"]
    assert out["as_text"]["modality"] == "text"  # content that looks like a path is text

    # recall: the right top hit, with the score the store itself computes
    pet = out["pet"]["memories"]
    assert pet[0]["id"] == ids["cat"] and pet[0]["content"] == FACTS["cat"][0]
    assert pet[0]["metadata"] == FACTS["cat"][2] and pet[0]["namespace"] == "assistant"
    assert all(m["namespace"] == "assistant" for m in pet) and ids["other"] not in {m["id"] for m in pet}
    assert {m["id"] for m in out["pet_all"]["memories"]} >= {ids["cat"], ids["other"]}  # no namespace: all
    assert [m["id"] for m in out["filtered"]["memories"]] == [ids["flight"]]
    ref_store = MemoryStore(store_dir)  # the same MiniLM weights in this process
    ref_store.checkout(out["stats"]["version"])  # the version the server searched, before `forget`
    ref = ref_store.search("what pet does the user have?", k=3, namespace="assistant", modality="text")
    assert [m["id"] for m in pet] == [r.id for r in ref]
    assert np.allclose([m["score"] for m in pet], [r.score for r in ref], atol=1e-6)
    assert all("media" not in m and "embedding" not in m for m in pet)

    # image query: the same photo first (cosine 1), then the others ranked as the tiny CLIP ranks them
    clip = ClipProvider(homes["clip_dir"])
    names = ("chelsea", "rocket", "coffee")
    vecs = clip.encode_image([(photos / f"{n}.img").read_bytes() for n in names])
    by_image = out["by_image"]["memories"]
    assert [m["id"] for m in by_image] == [ids[names[i]] for i in np.argsort(-(vecs @ vecs[0]))]
    assert by_image[0]["score"] > 0.9999 and by_image[0]["media_type"] == "image/png"
    assert by_image[0]["source"] == "chelsea.png" and out["by_path"]["memories"][0]["id"] == ids["chelsea"]
    rocket = next(m for m in by_image if m["id"] == ids["rocket"])
    assert rocket["source"] == (photos / "rocket.img").as_uri()  # as the client gave it

    # sql: read-only, JSON-safe rows; by default no media column at all, so no way to the bytes
    counts = {r["namespace"]: r["n"] for r in out["sql"]["rows"]}
    assert counts == {"assistant": 3, "paths": 1, "someone-else": 1}
    assert isinstance(out["sql"]["rows"][0]["t"], str)  # a timestamp as ISO text
    assert "media" not in out["columns"]["columns"] and out["columns"]["truncated"]
    for message in out["media_sql"]:
        assert "QueryError" in message and str(store_dir) not in message, message
    assert "read-only" in out["sql_write"]
    allowed = out["media_allowed"]  # serve --allow-media-sql: the operator's choice
    assert "media" in allowed["columns"] and allowed["row_count"] == 3
    assert all(r["media"].endswith(" bytes>") and len(r["b"]) > 100 for r in allowed["rows"])

    # resources: no media bytes, no server path
    assert [r["id"] for r in out["recent"]][:3] == [ids["coffee"], ids["rocket"], ids["chelsea"]]
    assert len(out["recent"]) == 8 and all("media" not in r and "embedding" not in r for r in out["recent"])
    assert [r["id"] for r in out["recent_image"]] == [ids["coffee"], ids["rocket"], ids["chelsea"]]
    assert out["one"]["id"] == ids["rocket"] and "media" not in out["one"]
    assert {k: t["memories"] for k, t in out["stats"]["tables"].items()} == {"text": 5, "image": 3}
    assert "path" not in out["stats"] and str(store_dir) not in json.dumps(out["stats"])

    # forget: idempotent; unknown ids are reported, not an error
    assert out["forget"] == {"deleted": 1, "not_found": []}
    assert out["forget_again"] == {"deleted": 0, "not_found": [ids["dentist"], "nope"]}
    assert ids["dentist"] not in {m["id"] for m in out["after"]["memories"]}
    timeline = [(e["operation"], e["content"]) for e in out["history"]["history"]]
    assert timeline == [("add", FACTS["dentist"][0]), ("delete", None)]

    # time-aware recall: the top 2 by score, newest first; a tiny half-life decays every score to ~0
    newest = out["newest"]["memories"]
    top2 = sorted(out["top2"]["memories"], key=lambda m: m["created_at"], reverse=True)
    assert [m["id"] for m in newest] == [m["id"] for m in top2] != [m["id"] for m in out["top2"]["memories"]]
    assert all(m["score"] < 1e-3 for m in out["decayed"]["memories"])
    at_least = out["min_score"]["memories"]
    assert at_least[0]["id"] == ids["cat"] and all(m["score"] >= 0.3 for m in at_least)

    # classify_image: the probabilities the CLIP provider computes for that photo
    probs = out["classes"]["probabilities"]
    ref_probs = clip.zero_shot_classification(base64.b64decode(photo), LABELS)
    assert np.allclose([probs[k] for k in LABELS], [ref_probs[k] for k in LABELS], atol=1e-5)
    assert out["classes"]["best"] == max(ref_probs, key=ref_probs.get) == next(iter(probs))
    assert all(want in message for message, want in out["errors"]), out["errors"]


def test_server_files_only_inside_allowed_dirs_and_store_errors_keep_serving(homes, tmp_path):
    """Outside the allowed directory (present or not, via a symlink or ..) the same refusal; inside, a
    missing file is named only as the client named it; without --allow-read no path is read at all.
    No CLIP weights: image memories and classify_image fail with the store's message, not a crash."""
    root, photos, log = homes["root"], homes["root"] / "photos", tmp_path / "server.log"
    secret = str(root / "secret.img")
    outside = [secret, str(root / "missing.img"), str(photos / "link.img"), str(photos / ".." / "secret.img")]

    async def scenario() -> dict[str, Any]:
        async with stdio_session(tmp_path / "store", homes["text"], log, "--allow-read", str(photos)) as s:
            out = {"denied": [await call_error(s, "remember", path=p) for p in outside]}
            out["recall"] = await call_error(s, "recall", path=secret)
            out["classify"] = await call_error(s, "classify_image", path=secret, labels=LABELS)
            out["relative"] = await call_error(s, "remember", path="photos/rocket.img")
            out["missing_inside"] = await call_error(s, "remember", path=str(photos / "missing.img"))
            out["inside"] = await call_error(s, "remember", path=str(photos / "rocket.img"))  # read; no CLIP
            rocket = b64(photos / "rocket.img")
            out["classify_data"] = await call_error(s, "classify_image", data=rocket, labels=LABELS)
            out["text"] = await call(s, "remember", content="still serving after errors")
            out["recall_text"] = await call(s, "recall", query="is it still serving?", k=1)
        async with stdio_session(tmp_path / "store", homes["text"], log) as s:
            out["none_allowed"] = await call_error(s, "remember", path=str(photos / "rocket.img"))
        return out

    out = asyncio.run(scenario())
    denied = out["denied"]
    refusals = {m[m.index("AccessDeniedError") :] for m in [*denied, out["recall"], out["classify"]]}
    assert len(set(denied)) == len(refusals) == 1  # the same text, whether or not the file exists
    assert all(str(root) not in m for m in (*denied, out["missing_inside"], out["inside"]))
    assert "InvalidInputError" in out["relative"] and "absolute" in out["relative"]
    assert "cannot read" in out["missing_inside"] and "<allowed>/missing.img" in out["missing_inside"]
    for message in (out["inside"], out["classify_data"]):
        assert "ModelNotInstalledError" in message and "aios-memory models install clip" in message
        assert "<models>" in message and str(homes["text"]) not in message
    assert out["recall_text"]["memories"][0]["id"] == out["text"]["ids"][0]
    assert "AccessDeniedError" in out["none_allowed"] and "--allow-read" in out["none_allowed"]


def test_sql_tool_stops_a_runaway_query_and_reads_only_max_rows(homes, tmp_path):
    """`serve --sql-timeout 1`: a query past it is a tool error naming the limit; the server keeps serving."""
    assert SQL_TIMEOUT == 10  # the documented default of the sql tool

    async def scenario() -> dict[str, Any]:
        log = tmp_path / "server.log"
        async with stdio_session(tmp_path / "store", homes["text"], log, "--sql-timeout", "1") as s:
            out = {"added": await call(s, "remember", content="still serving after a runaway query")}
            start = time.monotonic()
            out["runaway"] = await call_error(s, "sql", query="SELECT count(*) FROM range(1000000000000000)")
            out["runaway_s"], start = time.monotonic() - start, time.monotonic()
            out["huge"] = await call(s, "sql", query="SELECT * FROM range(1000000000000)", max_rows=5)
            out["huge_s"] = time.monotonic() - start
            out["small"] = await call(s, "sql", query="SELECT id FROM text_memories")
            slow = "(SELECT count(*) FROM range(1000000000000000)) > ?"
            out["recall"] = await call_error(s, "recall", query="anything", where=slow, params=[0])
            return out

    out = asyncio.run(scenario())
    assert all(w in out["runaway"] for w in ("QueryTimeoutError", "time limit of 1 s", "--sql-timeout"))
    assert out["runaway_s"] < 8, out["runaway_s"]  # 1 s, plus the round trip on a slow machine
    huge = out["huge"]
    assert [r["range"] for r in huge["rows"]] == [0, 1, 2, 3, 4]
    assert huge["row_count"] == 5 and huge["truncated"] and out["huge_s"] < 5
    assert out["small"]["rows"] == [{"id": out["added"]["ids"][0]}] and not out["small"]["truncated"]
    assert "QueryTimeoutError" in out["recall"]  # recall's where predicate has the same limit


def test_each_request_uses_the_store_the_callable_returns_for_it(store):
    """build_server(callable): the scoped store of the current request; the store enforces the scope."""
    a = store.add("Alice's cat is called Miso", namespace="alice")
    b = store.add("Bob's cat is called Tom", namespace="bob")
    current = [store.scoped(Scope.of(["alice"], media=False))]

    async def scenario() -> dict[str, Any]:
        async with Client(build_server(lambda: current[0])) as c:
            out = {"recall": await call(c, "recall", query="whose cat?", k=5)}
            out["sql"] = await call(c, "sql", query="SELECT namespace FROM text_memories")
            out["stats"] = await read_json(c, "memory://stats")
            out["write_bob"] = await call_error(c, "remember", content="hi", namespace="bob")
            out["forget_bob"] = await call(c, "forget", ids=[b])
            out["bad_sql"] = await call_error(c, "sql", query="SELECT nope FROM text_memories")
            current[0] = store.scoped(Scope.of(["bob"], write=False))  # the next request: another caller
            out["recall_bob"] = await call(c, "recall", query="whose cat?", k=5)
            out["read_only"] = await call_error(c, "forget", ids=[b])
            return out

    out = asyncio.run(scenario())
    assert [m["id"] for m in out["recall"]["memories"]] == [a]
    assert out["sql"]["rows"] == [{"namespace": "alice"}] and out["stats"]["namespaces"] == {"alice": 1}
    assert "AccessDeniedError" in out["write_bob"] and "AccessDeniedError" in out["read_only"]
    assert out["forget_bob"] == {"deleted": 0, "not_found": [b]}  # outside the scope: unknown to it
    assert [m["id"] for m in out["recall_bob"]["memories"]] == [b] and store.get(b).id == b
    assert str(store.path) not in out["bad_sql"]
    served = Served(store, dedupe=None, sql_timeout=None, allow_read=[store.path.parent])
    text = f"cannot open {store.path}/manifests/7.json or {store.path.parent / 'x.png'} under {Path.home()}"
    assert served.scrub(text, store) == "cannot open <store>/manifests/7.json or <allowed>/x.png under ~"


def test_serve_without_mcp_says_what_to_install(tmp_path):
    MemoryStore(tmp_path / "store")  # `serve` refuses a location that holds no store
    script = (
        "import sys; sys.modules['mcp'] = None\n"  # as if the mcp package were not installed
        "from aios_memory.cli import main\n"
        f"sys.argv = ['aios-memory', 'serve', '--standalone', '--store', {str(tmp_path / 'store')!r}]; main()"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'pip install "aios-memory[mcp]"' in proc.stderr


def test_cli_does_not_import_mcp():
    code = "import sys, aios_memory.cli, aios_memory.mcp_tools; print('mcp' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"

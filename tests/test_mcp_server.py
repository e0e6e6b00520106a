"""The MCP server (``aios-memory serve``) driven by the official SDK's client, over stdio and streamable
HTTP, against a real ``aios-memory`` subprocess: MiniLM for text, a seeded tiny CLIP for images."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
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
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from test_clip_model import TINY, make_clip_folder, real_images

from aios_memory import MemoryStore

FACTS = {
    "cat": ("The user's cat is called Miso", "assistant", {"kind": "fact"}),
    "flight": ("Flight to Tokyo on April 3", "assistant", {"kind": "travel"}),
    "dentist": ("Dentist appointment on March 14 at 10:30", "assistant", {"kind": "health"}),
    "other": ("The other user's cat is called Tom", "someone-else", {"kind": "fact"}),
}
TOOLS = {"remember", "recall", "forget", "sql", "classify_image", "history"}
LABELS = ["cat", "rocket", "cup of coffee"]


@pytest.fixture(scope="module")
def homes(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two model homes: text + a seeded tiny CLIP, and text only; plus real photos as files."""
    root = tmp_path_factory.mktemp("mcp")
    for name in ("clip", "text"):
        shutil.copytree(model_home / "models" / "text", root / name / "models" / "text")
    make_clip_folder(root / "hf", TINY, seed=11)
    weights = convert_clip(root / "hf", root / "clip" / "models" / "clip")
    images = real_images()
    photos = {}
    for name in ("chelsea", "rocket", "coffee"):
        photos[name] = root / f"{name}.img"  # no extension: the server sniffs the bytes
        photos[name].write_bytes(images[name])
    return {"clip": root / "clip", "text": root / "text", "clip_dir": weights.parent, "photos": photos}


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "AIOS_MEMORY_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}


@contextlib.asynccontextmanager
async def stdio_session(store: Path, home: Path, errlog: Path, *options: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aios_memory", "serve", "--store", str(store), *options],
        env=_env(home),
    )
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=120) as session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, **args: Any) -> Any:
    result = await session.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {result.content[0].text}"
    assert json.loads(result.content[0].text) == result.structured_content  # text and structured agree
    return result.structured_content


async def call_error(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return result.content[0].text


async def read_json(session: ClientSession, uri: str) -> Any:
    result = await session.read_resource(uri)
    assert result.contents[0].mime_type == "application/json"
    return json.loads(result.contents[0].text)


def test_stdio_remember_recall_sql_forget_resources(homes, tmp_path):
    store_dir, photos = tmp_path / "store", homes["photos"]
    log = tmp_path / "server.log"

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with stdio_session(store_dir, homes["clip"], log) as s:
            listed = await s.list_tools()
            out["tools"] = {t.name: t for t in listed.tools}
            ids = {}
            for key, (text, ns, meta) in FACTS.items():
                got = await call(s, "remember", content=text, namespace=ns, metadata=meta)
                assert got["modality"] == "text" and len(got["ids"]) == 1
                ids[key] = got["ids"][0]
            for name, path in photos.items():
                got = await call(s, "remember", content=str(path), namespace="assistant")
                assert got["modality"] == "image", got
                ids[name] = got["ids"][0]
            out["ids"] = ids
            out["pet"] = await call(
                s, "recall", query="what pet does the user have?", namespace="assistant", k=3
            )
            out["pet_all"] = await call(s, "recall", query="what pet does the user have?", k=5)
            out["filtered"] = await call(
                s,
                "recall",
                query="what pet does the user have?",
                where="metadata->>'$.kind' = ?",
                params=["travel"],
            )
            out["by_image"] = await call(s, "recall", query=str(photos["chelsea"]), k=3)
            out["sql"] = await call(
                s,
                "sql",
                query="SELECT namespace, count(*) AS n, max(created_at) AS t FROM text_memories GROUP BY 1 ORDER BY 1",
            )
            out["sql_media"] = await call(s, "sql", query="SELECT id, media FROM image_memories", max_rows=2)
            out["sql_write"] = await call_error(s, "sql", query="DELETE FROM text_memories")
            out["sql_bad"] = await call_error(s, "sql", query="SELECT nope FROM text_memories")
            out["recent"] = await read_json(s, "memory://recent")
            out["recent_image"] = await read_json(s, "memory://recent/image")
            out["one"] = await read_json(s, f"memory://{ids['rocket']}")
            out["stats"] = await read_json(s, "memory://stats")
            out["forget"] = await call(s, "forget", ids=[ids["dentist"]])
            out["forget_again"] = await call_error(s, "forget", ids=[ids["dentist"]])
            out["history"] = await call(s, "history", id=ids["dentist"])
            out["after"] = await call(s, "recall", query="dentist appointment", namespace="assistant", k=5)
            out["top2"] = await call(
                s, "recall", query="what pet does the user have?", namespace="assistant", k=2
            )
            out["newest"] = await call(
                s, "recall", query="what pet does the user have?", namespace="assistant", k=2, order="newest"
            )
            out["decayed"] = await call(
                s,
                "recall",
                query="what pet does the user have?",
                namespace="assistant",
                k=2,
                half_life_s=1e-3,
            )
            out["min_score"] = await call(
                s, "recall", query="what pet does the user have?", namespace="assistant", k=5, min_score=0.3
            )
            with pytest.raises(MCPError, match="no memory with id"):
                await s.read_resource("memory://00000000-0000-0000-0000-000000000000")
            out["classes"] = await call(s, "classify_image", image=str(photos["chelsea"]), labels=LABELS)
            out["not_image"] = await call_error(s, "classify_image", image="a cat", labels=LABELS)
            out["empty"] = await call_error(s, "remember", content="   ")
            out["bad_k"] = await call_error(s, "recall", query="cat", k=0)
        return out

    out = asyncio.run(scenario())
    ids = out["ids"]
    assert set(out["tools"]) >= TOOLS
    assert (
        out["tools"]["sql"].annotations.read_only_hint and out["tools"]["forget"].annotations.destructive_hint
    )

    # recall: the right top hit, with the score the store itself computes
    pet = out["pet"]["memories"]
    assert pet[0]["id"] == ids["cat"] and pet[0]["content"] == FACTS["cat"][0]
    assert pet[0]["metadata"] == {"kind": "fact"} and pet[0]["namespace"] == "assistant"
    assert all(m["namespace"] == "assistant" for m in pet) and ids["other"] not in {m["id"] for m in pet}
    assert {m["id"] for m in out["pet_all"]["memories"]} >= {ids["cat"], ids["other"]}  # no namespace: all
    assert [m["id"] for m in out["filtered"]["memories"]] == [ids["flight"]]
    # the same MiniLM weights in this process (model_home): the store's own ranking and scores
    ref_store = MemoryStore(store_dir)
    ref_store.checkout(out["stats"]["version"])  # the version the server searched, before `forget`
    ref = ref_store.search("what pet does the user have?", k=3, namespace="assistant")
    assert [m["id"] for m in pet] == [r.id for r in ref]
    assert np.allclose([m["score"] for m in pet], [r.score for r in ref], atol=1e-6)
    for m in pet:
        assert set(m) >= {
            "id",
            "modality",
            "score",
            "namespace",
            "created_at",
            "content",
            "source",
            "metadata",
        }
        assert "media" not in m and "embedding" not in m

    # image query: the same photo first (cosine 1), then the others ranked as the tiny CLIP ranks them
    clip = ClipProvider(homes["clip_dir"])
    vecs = clip.encode_image([homes["photos"][n].read_bytes() for n in ("chelsea", "rocket", "coffee")])
    expected = [("chelsea", "rocket", "coffee")[i] for i in np.argsort(-(vecs @ vecs[0]))]
    by_image = out["by_image"]["memories"]
    assert [m["id"] for m in by_image] == [ids[n] for n in expected]
    assert by_image[0]["score"] > 0.9999 and by_image[0]["modality"] == "image"
    assert by_image[0]["media_type"] == "image/png" and by_image[0]["source"].startswith("file://")

    # sql: read-only, JSON-safe rows, capped; bytes never sent
    assert out["sql"]["columns"] == ["namespace", "n", "t"]
    assert [(r["namespace"], r["n"]) for r in out["sql"]["rows"]] == [("assistant", 3), ("someone-else", 1)]
    assert isinstance(out["sql"]["rows"][0]["t"], str)  # a timestamp as ISO text
    media = out["sql_media"]
    assert media["row_count"] == 2 and len(media["rows"]) == 2 and media["truncated"]
    assert all(r["media"].startswith("<") and r["media"].endswith(" bytes>") for r in media["rows"])
    assert "read-only" in out["sql_write"] and "QueryError" in out["sql_write"]
    assert "QueryError" in out["sql_bad"] and "nope" in out["sql_bad"]

    # resources
    assert [r["id"] for r in out["recent"]][:3] == [ids["coffee"], ids["rocket"], ids["chelsea"]]
    assert len(out["recent"]) == 7 and all("media" not in r and "embedding" not in r for r in out["recent"])
    assert [r["id"] for r in out["recent_image"]] == [ids["coffee"], ids["rocket"], ids["chelsea"]]
    assert (
        out["one"]["id"] == ids["rocket"] and out["one"]["modality"] == "image" and "media" not in out["one"]
    )
    assert (
        out["stats"]["tables"]["text"]["memories"] == 4 and out["stats"]["tables"]["image"]["memories"] == 3
    )

    # forget: deleted, gone from recall; a second time is a tool error with the store's message
    assert out["forget"] == {"deleted": 1}
    assert ids["dentist"] not in {m["id"] for m in out["after"]["memories"]}
    assert "MemoryNotFoundError" in out["forget_again"] and ids["dentist"] in out["forget_again"]
    timeline = out["history"]["history"]
    assert [e["operation"] for e in timeline] == ["add", "delete"]
    assert timeline[0]["content"] == FACTS["dentist"][0] and timeline[1]["content"] is None

    # time-aware recall: the top 2 by score, newest first; a tiny half-life decays every score to ~0
    newest = out["newest"]["memories"]
    top2 = sorted(out["top2"]["memories"], key=lambda m: m["created_at"], reverse=True)
    assert [m["id"] for m in newest] == [m["id"] for m in top2] != [m["id"] for m in out["top2"]["memories"]]
    assert all(m["score"] < 1e-3 for m in out["decayed"]["memories"])
    assert out["min_score"]["memories"][0]["id"] == ids["cat"]
    assert all(m["score"] >= 0.3 for m in out["min_score"]["memories"])

    # classify_image: the probabilities the CLIP provider computes for that photo
    probs = out["classes"]["probabilities"]
    ref_probs = clip.zero_shot_classification(homes["photos"]["chelsea"].read_bytes(), LABELS)
    assert probs.keys() == ref_probs.keys() and abs(sum(probs.values()) - 1) < 1e-5
    assert np.allclose([probs[k] for k in LABELS], [ref_probs[k] for k in LABELS], atol=1e-5)
    assert out["classes"]["best"] == max(ref_probs, key=ref_probs.get) == next(iter(probs))
    assert "InvalidInputError" in out["not_image"]
    assert "EmptyContentError" in out["empty"] and "InvalidInputError" in out["bad_k"]


def test_store_errors_are_tool_errors_and_the_server_keeps_serving(homes, tmp_path):
    """No CLIP weights: classify_image and image memories fail with the store's message, not a crash."""

    async def scenario() -> dict[str, Any]:
        async with stdio_session(tmp_path / "store", homes["text"], tmp_path / "server.log") as s:
            out = {
                "classify": await call_error(
                    s, "classify_image", image=str(homes["photos"]["rocket"]), labels=LABELS
                ),
                "image": await call_error(s, "remember", content=str(homes["photos"]["rocket"])),
                "text": await call(s, "remember", content="still serving after errors"),
            }
            out["recall"] = await call(s, "recall", query="is it still serving?", k=1)
            return out

    out = asyncio.run(scenario())
    for message in (out["classify"], out["image"]):
        assert "ModelNotInstalledError" in message and "aios-memory models install clip" in message
    assert out["recall"]["memories"][0]["id"] == out["text"]["ids"][0]


def test_sql_tool_stops_a_runaway_query_and_reads_only_max_rows(homes, tmp_path):
    """`serve --sql-timeout 1`: a query past it is a tool error naming the limit; the server keeps serving."""
    from aios_memory.mcp_server import SQL_TIMEOUT

    assert SQL_TIMEOUT == 10  # the documented default of the sql tool

    async def scenario() -> dict[str, Any]:
        log = tmp_path / "server.log"
        async with stdio_session(tmp_path / "store", homes["text"], log, "--sql-timeout", "1") as s:
            out = {"added": await call(s, "remember", content="still serving after a runaway query")}
            start = time.monotonic()
            out["runaway"] = await call_error(s, "sql", query="SELECT count(*) FROM range(1000000000000000)")
            out["runaway_s"] = time.monotonic() - start
            start = time.monotonic()
            out["huge"] = await call(s, "sql", query="SELECT * FROM range(1000000000000)", max_rows=5)
            out["huge_s"] = time.monotonic() - start
            out["small"] = await call(s, "sql", query="SELECT id FROM text_memories")
            slow = "(SELECT count(*) FROM range(1000000000000000)) > ?"
            out["recall"] = await call_error(s, "recall", query="anything", where=slow, params=[0])
            return out

    out = asyncio.run(scenario())
    assert "QueryTimeoutError" in out["runaway"] and "time limit of 1 s" in out["runaway"]
    assert "--sql-timeout" in out["runaway"]
    assert out["runaway_s"] < 8, out["runaway_s"]  # 1 s, plus the round trip on a slow machine
    huge = out["huge"]
    assert [r["range"] for r in huge["rows"]] == [0, 1, 2, 3, 4]
    assert huge["row_count"] == 5 and huge["truncated"] and out["huge_s"] < 5
    assert out["small"]["rows"] == [{"id": out["added"]["ids"][0]}] and not out["small"]["truncated"]
    assert "QueryTimeoutError" in out["recall"]  # recall's where predicate has the same limit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_streamable_http_on_loopback(homes, tmp_path):
    port = _free_port()
    log = (tmp_path / "http.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aios_memory",
            "serve",
            "--store",
            str(tmp_path / "store"),
            "--http",
            "--port",
            str(port),
            "--dedupe",
            "0.95",
        ],
        env=_env(homes["text"]),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "http.log").read_text()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the HTTP server did not start"
            time.sleep(0.2)
        if shutil.which("ss"):  # iproute2: the listening socket is bound to loopback only
            listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
            bound = [line.split()[3] for line in listening.stdout.splitlines()]
            assert bound == [f"127.0.0.1:{port}"], bound

        async def scenario() -> dict[str, Any]:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=120) as s:
                    await s.initialize()
                    tools = {t.name for t in (await s.list_tools()).tools}
                    a = await call(s, "remember", content="The wifi password is hunter2", namespace="home")
                    b = await call(s, "remember", content="Buy oat milk and eggs", namespace="home")
                    again = await call(
                        s, "remember", content="The wifi password is hunter2!", namespace="home"
                    )
                    assert again["ids"] == a["ids"]  # --dedupe: a near-identical memory is not stored again
                    hit = await call(s, "recall", query="what is the wifi password?", namespace="home", k=2)
                    recent = await read_json(s, "memory://recent/text")
                    return {"tools": tools, "ids": a["ids"] + b["ids"], "hit": hit, "recent": recent}

        out = asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()
    assert out["tools"] >= TOOLS
    assert [m["id"] for m in out["hit"]["memories"]] == out["ids"]  # the wifi memory first
    assert out["hit"]["memories"][0]["score"] > out["hit"]["memories"][1]["score"]
    assert [r["id"] for r in out["recent"]] == out["ids"][::-1]


def test_serve_without_mcp_says_what_to_install(tmp_path):
    script = (
        "import sys; sys.modules['mcp'] = None\n"  # as if the mcp package were not installed
        "from aios_memory.cli import main\n"
        f"sys.argv = ['aios-memory', 'serve', '--store', {str(tmp_path / 'store')!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'pip install "aios-memory[mcp]"' in proc.stderr


def test_cli_does_not_import_mcp():
    code = "import sys, aios_memory.cli, aios_memory.mcp_server; print('mcp' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "False"

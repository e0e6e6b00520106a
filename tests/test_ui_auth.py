"""``aios-memory ui`` tokens and scopes: a store with namespaces A, B and shared, tokens made by the CLI,
and the server over it (see tests/test_ui.py for the models and the store it starts from)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ui_helpers
from ui_helpers import (
    ALSA,
    bearer,
    call,
    get_json,
    post_json,
    request,
    start_ui,
    stop_ui,
)

# a module-scoped fixture, imported so that pytest finds it in this module
ui_env = ui_helpers.ui_env

# --- tokens and scopes -----------------------------------------------------------------------------------
POPULATE_SCOPED = r"""
import json, sys
from pathlib import Path
from aios_memory import MemoryStore

store, photos, clip = MemoryStore(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ids = {
    "a_text": store.add("Agent A's note: the cat is called Miso", namespace="A"),
    "a_image": store.add(photos / "chelsea.png", namespace="A"),
    "b_text": store.add("Agent B's secret: the vault code is 4711", namespace="B"),
    "b_image": store.add(photos / "rocket.jpg", namespace="B"),
    "b_audio": store.add(clip, namespace="B"),
    "shared_text": store.add("Shared: the team meets on Mondays", namespace="shared"),
}
print(json.dumps(ids))
"""
B_MARKS = ("vault", "4711", "rocket", "Rear_Left", '"B"')  # what of B an answer to A could show


def make_token(store: Path, env: dict[str, str], name: str, *args: str) -> dict[str, Any]:
    from conftest import run_cli

    return json.loads(
        run_cli("--store", str(store), "token", "create", "--name", name, *args, env=env).stdout
    )


@pytest.fixture(scope="module")
def scoped(ui_env: dict[str, Any]) -> Any:
    """A store with namespaces A, B and shared, tokens made by the CLI, and the page over it."""
    root = ui_env["root"] / "scoped"
    proc = subprocess.run(
        [sys.executable, "-c", POPULATE_SCOPED, str(root), str(ui_env["root"] / "photos"),
         str(ALSA / "Rear_Left.wav")],
        env=ui_env["env"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = ui_env["env"]
    tokens = {
        "a": make_token(root, env, "agent-a", "--namespace", "A", "--namespace", "shared"),
        "b": make_token(root, env, "agent-b", "--namespace", "B", "--namespace", "shared"),
        "a_ro": make_token(root, env, "agent-a-reader", "--namespace", "A", "--read-only", "--no-sql"),
    }
    ui, log, url, port, owner = start_ui(root, env, ui_env["root"] / "scoped.log")
    try:
        yield {"url": url, "port": port, "token": owner, "root": root, "env": env, "tokens": tokens,
               "ids": json.loads(proc.stdout.splitlines()[-1])}  # fmt: skip
    finally:
        stop_ui(ui, log)


def as_token(scoped: dict[str, Any], who: str) -> dict[str, Any]:
    """The ``scoped`` server, with ``who``'s token as the one ``call``/``get_json``/``post_json`` send."""
    return {**scoped, "token": scoped["tokens"][who]["token"]}


def post_bytes(server: dict[str, Any], path: str, body: bytes) -> tuple[int, Any]:
    status, _, raw = call(server, "POST", path, body)
    return status, json.loads(raw)


def test_a_token_gets_nothing_of_b(scoped):
    a, ids = as_token(scoped, "a"), scoped["ids"]
    answers = []
    status, stats = get_json(a, "/api/stats")
    assert status == 200 and stats["namespaces"] == {"A": 2, "shared": 1}
    # a table only B has rows in (audio) is not listed for A at all
    assert {m: t["memories"] for m, t in stats["tables"].items()} == {"text": 2, "image": 1}
    assert stats["caller"]["name"] == "agent-a" and stats["caller"]["namespaces"] == ["A", "shared"]
    answers.append(stats)
    for modality, expected in (("text", {ids["a_text"], ids["shared_text"]}), ("image", {ids["a_image"]})):
        status, page = get_json(a, f"/api/memories?modality={modality}&limit=200")
        assert (
            status == 200
            and {m["id"] for m in page["memories"]} == expected
            and page["total"] == len(expected)
        )
        answers.append(page)
    status, page = get_json(a, "/api/memories?modality=audio")
    assert status == 200 and page["total"] == 0 and page["memories"] == []
    for query in ("the vault code", "a rocket", "rear left"):
        status, found = post_json(a, "/api/search", {"query": query, "k": 10})
        assert status == 200 and found["results"], query
        assert {r["namespace"] for r in found["results"]} <= {"A", "shared"}
        answers.append(found)
    rocket = (scoped["root"].parent / "photos" / "rocket.jpg").read_bytes()
    status, _, raw = call(a, "POST", "/api/search/image?k=10", rocket)
    assert status == 200 and [r["id"] for r in json.loads(raw)["results"]] == [ids["a_image"]]
    answers.append(json.loads(raw))
    assert not [m for m in B_MARKS if m in json.dumps(answers)], answers
    assert not {ids["b_text"], ids["b_image"], ids["b_audio"]} & set(
        re.findall(r"[0-9a-f-]{36}", json.dumps(answers))
    )
    # B's memories by id: the answer an unknown id gets
    for path in (
        f"/api/media/{ids['b_image']}",
        f"/api/media/{ids['b_audio']}",
        f"/api/thumb/{ids['b_image']}",
    ):
        status, _, body = call(a, "GET", path)
        assert status == 404 and json.loads(body)["type"] == "MemoryNotFoundError", path
        assert json.loads(body)["error"] == f"no memory with id {path.rsplit('/', 1)[1]!r}"
    assert call(a, "GET", f"/api/thumb/{ids['a_image']}")[0] == 200
    # naming B: the listing's views hold none of B's rows; a search of B is refused by the store (403)
    for modality in ("text", "image", "audio"):
        status, page = get_json(a, f"/api/memories?modality={modality}&namespace=B")
        assert status == 200 and page["total"] == 0 and page["memories"] == []
    for status, body in (
        post_json(a, "/api/search", {"query": "vault", "namespace": "B"}),
        post_bytes(a, "/api/search/image?namespace=B", rocket),
    ):
        assert status == 403 and body["type"] == "AccessDeniedError"
        assert body["error"] == "token 'agent-a' may not read namespace 'B'"
    status, _, raw = call(
        a, "POST", "/api/memories?namespace=B", b"planted by A", {"Content-Type": "text/plain"}
    )
    assert status == 403 and json.loads(raw) == {
        "error": "token 'agent-a' may not write namespace 'B'; nothing was changed",
        "type": "AccessDeniedError",
    }
    assert get_json(scoped, "/api/stats")[1]["namespaces"] == {"A": 2, "B": 3, "shared": 1}  # owner: all


def test_uploads_land_in_the_scope_and_shared_is_shared(scoped):
    a, b = as_token(scoped, "a"), as_token(scoped, "b")
    status, _, raw = call(a, "POST", "/api/memories?namespace=shared&source=note.txt",
                          b"Lunch order: ramen for everyone", {"Content-Type": "text/plain"})  # fmt: skip
    memory = json.loads(raw)
    assert status == 201 and memory["namespace"] == "shared" and memory["content"].startswith("Lunch order")
    png = (scoped["root"].parent / "photos" / "astronaut.png").read_bytes()
    status, _, raw = call(a, "POST", "/api/memories?namespace=A", png, {"Content-Type": "image/png"})
    assert (
        status == 201
        and json.loads(raw)["modality"] == "image"
        and json.loads(raw)["media_bytes"] == len(png)
    )
    assert call(a, "GET", f"/api/media/{json.loads(raw)['id']}")[2] == png
    texts = get_json(b, "/api/memories?modality=text")[1]["memories"]
    assert {m["namespace"] for m in texts} == {"B", "shared"} and memory["id"] in {m["id"] for m in texts}
    assert call(b, "GET", f"/api/media/{json.loads(raw)['id']}")[0] == 404  # A's image: not B's
    found = post_json(b, "/api/search", {"query": "ramen", "modality": "text", "k": 1})[1]["results"]
    assert [r["id"] for r in found] == [memory["id"]]


def test_read_only_token_cannot_upload(scoped):
    reader = as_token(scoped, "a_ro")
    before = get_json(scoped, "/api/stats")[1]["namespaces"]
    for ctype, body in (
        ("text/plain", b"a note"),
        ("image/png", (scoped["root"].parent / "photos" / "chelsea.png").read_bytes()),
    ):
        status, _, raw = call(reader, "POST", "/api/memories?namespace=A", body, {"Content-Type": ctype})
        assert (
            status == 403
            and json.loads(raw)["error"] == "token 'agent-a-reader' is read-only; nothing was changed"
        )
    assert get_json(scoped, "/api/stats")[1]["namespaces"] == before
    # it still reads: the listing's fixed queries run without the SQL right, searches too
    status, page = get_json(reader, "/api/memories?modality=text")
    assert status == 200 and [m["namespace"] for m in page["memories"]] == ["A"]
    assert post_json(reader, "/api/search", {"query": "cat", "k": 3})[0] == 200


def every_route(ids: dict[str, str]) -> list[tuple[str, str, bytes | None]]:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    return [
        ("GET", "/", None), ("GET", "/app.js", None), ("GET", "/style.css", None), ("GET", "/icon.svg", None),
        ("HEAD", "/", None), ("GET", "/no/such/page", None), ("GET", "/api/stats", None),
        ("GET", "/api/memories?modality=text", None), ("GET", f"/api/media/{ids['a_image']}", None),
        ("GET", f"/api/thumb/{ids['a_image']}", None), ("GET", "/api/media/no-such-id", None),
        ("POST", "/api/search", b'{"query": "cat"}'), ("POST", "/api/search/image", png),
        ("POST", "/api/memories?namespace=A", b"a note"), ("POST", "/api/nothing", b"x"),
    ]  # fmt: skip


def test_missing_and_wrong_tokens_get_401_everywhere(scoped):
    port, revealed = scoped["port"], {"api": set(), "page": set()}
    wrong = [
        {}, bearer("wrong"), bearer("aiosm_deadbeef_" + "x" * 43), bearer("aiosm-owner_" + "x" * 43),
        bearer(scoped["tokens"]["a"]["token"][:-1] + "y"), {"Authorization": "Basic YTpi"},
        {"Authorization": f"Basic {scoped['tokens']['a']['token']}"},
        {"Cookie": f"aiosm_ui_{port}=wrong"}, {"Cookie": f"aiosm_ui_{port + 1}={scoped['token']}"},
    ]  # fmt: skip
    for method, path, body in every_route(scoped["ids"]):
        for headers in wrong:
            headers = {**headers, "Content-Type": "application/json" if "search" in path else "text/plain"}
            status, got, raw = request(port, method, path, body, headers)
            assert status == 401 and got["www-authenticate"].startswith("Bearer"), (method, path, headers)
            kind = "api" if path.startswith("/api/") else "page"
            assert got["content-type"].startswith("application/json" if kind == "api" else "text/html")
            revealed[kind].add(raw)
    assert len(revealed["api"]) == 1 and json.loads(revealed["api"].pop())["type"] == "Unauthorized"
    pages = revealed["page"] - {b""}  # HEAD's answer has no body
    assert len(pages) == 1 and b"needs a token" in pages.pop()
    status, got, _ = request(port, "GET", "/?token=wrong")
    assert status == 401 and "set-cookie" not in got


def test_token_visit_sets_the_cookie_and_redirects(scoped):
    token, port = scoped["tokens"]["a"]["token"], scoped["port"]
    status, headers, _ = request(port, "GET", f"/?token={token}")
    assert status == 303 and headers["location"] == "/"
    name, _, attrs = headers["set-cookie"].partition("; ")
    assert name == f"aiosm_ui_{port}={token}" and set(attrs.split("; ")) == {
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    }
    cookie = {"Cookie": name}
    status, headers, body = request(port, "GET", "/", headers=cookie)
    assert status == 200 and b'id="drop"' in body
    status, _, body = request(port, "GET", "/api/stats", headers=cookie)
    assert status == 200 and json.loads(body)["caller"]["name"] == "agent-a"
    log = (scoped["root"].parent / "scoped.log").read_text()
    assert token not in log and "token=<hidden>" in log  # the sign-in link's token is not logged


def test_revoked_token_is_refused_on_the_next_request(scoped):
    from conftest import run_cli

    made = make_token(scoped["root"], scoped["env"], "short-lived", "--namespace", "A")
    port, cookie = scoped["port"], {"Cookie": f"aiosm_ui_{scoped['port']}={made['token']}"}
    assert request(port, "GET", "/api/stats", headers=bearer(made["token"]))[0] == 200
    assert request(port, "GET", "/api/stats", headers=cookie)[0] == 200
    run_cli("--store", str(scoped["root"]), "token", "revoke", made["id"], env=scoped["env"])
    assert request(port, "GET", "/api/stats", headers=bearer(made["token"]))[0] == 401
    status, headers, _ = request(port, "GET", "/", headers=cookie)
    assert status == 401 and "Max-Age=0" in headers["set-cookie"]  # the browser forgets it
    assert request(port, "GET", "/api/stats", headers=bearer(scoped["tokens"]["a"]["token"]))[0] == 200


def test_no_token_is_on_disk_in_plain_text(scoped):
    """grep the store (tokens file included) and the model home for every token, and the owner's."""
    tokens = [t["token"] for t in scoped["tokens"].values()] + [scoped["token"]]
    tokens_file = scoped["root"] / "_service" / "tokens.json"
    assert tokens_file.stat().st_mode & 0o777 == 0o600
    assert [e["name"] for e in json.loads(tokens_file.read_text())["tokens"]][:3] == [
        "agent-a",
        "agent-b",
        "agent-a-reader",
    ]
    home = Path(scoped["env"]["AIOS_MEMORY_HOME"])
    for token in tokens:
        secret = token[-43:]  # the secret (token_urlsafe(32)) may itself hold "_"
        grep = subprocess.run(["grep", "-rlF", "-e", token, "-e", secret, str(scoped["root"]), str(home)],
                              capture_output=True, text=True)  # fmt: skip
        assert grep.returncode == 1 and not grep.stdout, grep.stdout  # 1: no match anywhere


def test_server_in_a_thread_for_another_component(tmp_path, model_home):
    """``UiServer`` as a daemon would run it: its own store object, the store's tokens, no owner token.
    Error messages name the store ``<store>``, never its directory."""
    import threading

    from aios_memory import MemoryStore
    from aios_memory.service.tokens import TokenStore
    from aios_memory.ui import UiServer

    store = MemoryStore(tmp_path / "daemon-store")
    store.add_many(["alpha note", "beta note"], namespace="A")
    store.add("gamma note", namespace="B")
    tokens = TokenStore(store.path)
    token, _ = tokens.create("agent-a", ["A"])
    server = UiServer(store, 0, tokens=tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server.owner_token is None and server.login_url == server.url
        status, _, body = request(server.port, "GET", "/api/stats", headers=bearer(token))
        assert status == 200 and json.loads(body)["namespaces"] == {"A": 2}
        assert request(server.port, "GET", "/api/stats", headers=bearer("aiosm-owner_" + "x" * 43))[0] == 401
        for fragment in (store.path / "data").rglob("*.parquet"):
            fragment.unlink()  # damage the store: the answer must not say where it lives
        status, _, body = request(server.port, "GET", "/api/memories?modality=text", headers=bearer(token))
        error = json.loads(body)["error"]
        assert status == 500 and "<store>" in error and str(tmp_path) not in error, error
        tokens.path.write_text("{not json")  # an unreadable tokens file: 503, and only the log says why
        status, _, body = request(server.port, "GET", "/api/stats", headers=bearer(token))
        assert (
            status == 503 and str(tmp_path) not in body.decode() and "see the server's log" in body.decode()
        )
    finally:
        server.shutdown()
        server.server_close()

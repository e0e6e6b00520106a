"""``aios-memory ui`` for real: the server runs as a subprocess over a store of real text, image and audio
memories; its JSON API is driven with urllib, and its page in headless Chromium (Debian's ``chromium``,
driven by Playwright), with screenshots checked for content and kept when ``$AIOS_MEMORY_SCREENSHOTS`` is set.

Models: the real MiniLM and Whisper base weights; CLIP converted from seeded random weights (no package
ships real CLIP weights), which still embeds the same image to the same vector, so an image query finds
its own photo first with a score of 1.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ALSA = Path("/usr/share/sounds/alsa")
CHROMIUM = Path("/usr/bin/chromium")
CLIPS = ["Front_Center", "Rear_Left"]
PHOTOS = {"chelsea": "png", "rocket": "jpg", "coffee": "jpg", "astronaut": "png"}
NOTES = [
    "The user's cat is called Miso",
    "Flight to Tokyo on April 3",
    "Dentist on March 14 at 10:30",
    "Buy oat milk and coffee beans on the way home",
    "The rocket launch was moved to Friday morning",
    "Parquet is a columnar storage format.",
    "Mum's birthday is on the 9th of June; she likes tulips",
    '<img src=x onerror="document.body.dataset.pwned=1"> & <b>not bold</b>',
]
LOG = [f"log entry {i:02d}: nightly backup finished without errors" for i in range(24)]
MAX_UPLOAD = 1_000_000
VIEWPORT = {"width": 1280, "height": 1000}

POPULATE = r"""
import json, sys
from pathlib import Path
from aios_memory import MemoryStore

root, notes, log, photos, clips = Path(sys.argv[1]), *map(json.loads, sys.argv[2:6])
store = MemoryStore(root / "store")
store.add_many(log, namespace="log", metadata={"kind": "log"})
store.add_many(notes, namespace="notes")
store.add_many([root / "photos" / p for p in photos], namespace="photos")
store.add_many([Path(c) for c in clips], namespace="sounds")
expected = {}
for query, modality in (("what pet does the user have?", None), ("rear left", "audio"), ("a cat", "image")):
    hits = store.search(query, k=5, modality=modality)
    expected[query] = [(h.id, h.score, h.content or h.source) for h in hits]
rows = store.sql("SELECT id, source FROM image_memories UNION ALL SELECT id, source FROM audio_memories")
print(json.dumps({"expected": expected, "media": {r["source"].rsplit("/", 1)[-1]: r["id"] for r in rows.to_pylist()}}))
"""


def _need(what: str, ok: bool) -> None:
    """Missing tools skip a developer's run but fail CI, where .ci/run installs them."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required in CI")
        pytest.skip(f"{what} is not installed")


# --- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ui_env(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model home (real MiniLM + Whisper, seeded CLIP), files to store, and a store built from them."""
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder, real_images

    from aios_memory.plugins import get_provider

    _need("alsa-utils' sounds", (ALSA / "Front_Center.wav").exists())
    get_provider("whisper-base").install()
    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    for model in ("text", "whisper"):
        shutil.copytree(model_home / "models" / model, home / "models" / model)
    make_clip_folder(root / "hf", TINY, seed=7)
    convert_clip(root / "hf", home / "models" / "clip")
    images = real_images()
    (root / "photos").mkdir()
    for name, ext in PHOTOS.items():
        (root / "photos" / f"{name}.{ext}").write_bytes(images[name])
    env = {**os.environ, "AIOS_MEMORY_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    args = [NOTES, LOG, [f"{n}.{e}" for n, e in PHOTOS.items()], [str(ALSA / f"{c}.wav") for c in CLIPS]]
    proc = subprocess.run(
        [sys.executable, "-c", POPULATE, str(root), *map(json.dumps, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "env": env, "store": root / "store", **json.loads(proc.stdout.splitlines()[-1])}


def start_ui(store: Path, env: dict[str, str], log_path: Path) -> Any:
    """`aios-memory ui --store S --port 0 --no-browser` as a real subprocess: (process, its log, the
    base URL, the port, the owner token from the printed sign-in address)."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_memory", "ui", "--store", str(store), "--port", "0",
         "--no-browser", "--max-upload", str(MAX_UPLOAD)],
        env=env, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the socket listens
    match = re.search(r"(http://127\.0\.0\.1:(\d+)/)\?token=(aiosm-owner_[A-Za-z0-9_-]{43}) ", line)
    if not match:
        stop_ui(proc, log)
        raise AssertionError(f"no sign-in URL in {line!r}; log: {log_path.read_text()[-2000:]}")
    return proc, log, match.group(1), int(match.group(2)), match.group(3)


def stop_ui(proc: Any, log: Any) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def server(ui_env: dict[str, Any]) -> Any:
    """The page over the module's store; yields its base URL, port and owner token."""
    proc, log, url, port, token = start_ui(ui_env["store"], ui_env["env"], ui_env["root"] / "server.log")
    try:
        yield {"url": url, "port": port, "token": token, "login_url": f"{url}?token={token}", **ui_env}
    finally:
        stop_ui(proc, log)


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with exactly these headers (no token unless they carry one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(
    server: dict[str, Any],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A request signed with the owner token (unless ``headers`` carry another)."""
    return request(server["port"], method, path, body, {**bearer(server["token"]), **(headers or {})})


def get_json(server: dict[str, Any], path: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(server["url"].rstrip("/") + path, headers=bearer(token or server["token"]))
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"] == "application/json; charset=utf-8"
        return exc.code, json.loads(exc.read())


def post_json(server: dict[str, Any], path: str, obj: Any, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **bearer(token or server["token"])}
    status, headers, body = call(server, "POST", path, json.dumps(obj).encode(), headers)
    assert headers["content-type"] == "application/json; charset=utf-8"
    return status, json.loads(body)


# --- the HTTP API --------------------------------------------------------------------------------------
def test_listens_on_loopback_only(server):
    """The listening socket is bound to 127.0.0.1 (read from the kernel's table, not from our own code)."""
    port = f"{server['port']:04X}"
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    ]
    ours = [addr for addr in listening if addr.endswith(f":{port}")]
    assert ours == ["0100007F:" + port], ours
    v6 = Path("/proc/net/tcp6")
    assert not v6.exists() or f":{port} " not in v6.read_text()


def test_page_and_assets(server):
    for path, ctype in (("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = call(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith(ctype) and body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    page = call(server, "GET", "/")[2].decode()
    assert 'id="drop"' in page and 'type="file"' in page and "https://" not in page  # no CDN
    script = call(server, "GET", "/app.js")[2].decode()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script


def test_stats(server):
    status, stats = get_json(server, "/api/stats")
    assert status == 200 and "path" not in stats and str(server["root"]) not in json.dumps(stats)
    assert stats["caller"] == {"name": "owner", "namespaces": None, "write": True, "sql": True,
                               "media": True, "admin": True}  # fmt: skip
    assert {m: t["memories"] for m, t in stats["tables"].items()} == {
        "text": len(NOTES) + len(LOG),
        "image": len(PHOTOS),
        "audio": len(CLIPS),
    }
    assert stats["namespaces"] == {"log": len(LOG), "notes": len(NOTES), "photos": 4, "sounds": 2}
    assert stats["tables"]["text"]["accepts"] == ["text"]
    assert stats["tables"]["image"]["accepts"] == ["image", "text"]  # CLIP: text and image queries
    assert stats["tables"]["audio"]["accepts"] == ["audio", "text"]  # Whisper, and transcripts by text


def test_list_pages_newest_first(server):
    seen: list[str] = []
    for offset, n in ((0, 24), (24, 8)):
        status, page = get_json(server, f"/api/memories?modality=text&limit=24&offset={offset}")
        assert status == 200 and page["total"] == 32 and len(page["memories"]) == n
        seen += [m["id"] for m in page["memories"]]
        stamps = [m["created_at"] for m in page["memories"]]
        assert stamps == sorted(stamps, reverse=True)
        assert all("media" not in m and "embedding" not in m for m in page["memories"])
    assert len(set(seen)) == 32
    first = get_json(server, "/api/memories?modality=text&limit=24")[1]["memories"]
    assert {m["namespace"] for m in first[: len(NOTES)]} == {"notes"}  # the later commit comes first
    status, notes = get_json(server, "/api/memories?modality=text&namespace=notes")
    assert sorted(m["content"] for m in notes["memories"]) == sorted(NOTES) and notes["total"] == len(NOTES)
    status, images = get_json(server, "/api/memories?modality=image")
    assert {m["source"].rsplit("/", 1)[-1] for m in images["memories"]} == set(server["media"]) - {
        f"{c}.wav" for c in CLIPS
    }
    assert all(
        m["media_type"] in ("image/png", "image/jpeg") and m["media_bytes"] > 0 for m in images["memories"]
    )
    status, audio = get_json(server, "/api/memories?modality=audio")
    transcripts = sorted(m["transcript"] for m in audio["memories"])
    assert transcripts == ["Front Center.", "Rear, left."], transcripts
    assert get_json(server, "/api/memories?modality=text&namespace=nobody")[1]["total"] == 0


@pytest.mark.parametrize(
    "query, message",
    [
        ("modality=video", "unknown modality 'video'"),
        ("modality=text&limit=0", "limit must be an integer from 1 to 200"),
        ("modality=text&limit=abc", "limit must be an integer"),
        ("modality=text&offset=-1", "offset must be an integer from 0"),
        ("modality=text&namespace=" + "x" * 300, "namespace must be a non-empty string of at most 256"),
    ],
    ids=["modality", "limit-0", "limit-abc", "offset", "namespace"],
)
def test_bad_listing_is_400_with_the_message(server, query, message):
    status, body = get_json(server, f"/api/memories?{query}")
    assert status == 400 and message in body["error"], body


def test_media_bytes_and_types(server):
    root = server["root"]
    for name, id_ in server["media"].items():
        status, headers, body = call(server, "GET", f"/api/media/{id_}")
        original = (
            (ALSA / name).read_bytes() if name.endswith(".wav") else (root / "photos" / name).read_bytes()
        )
        assert status == 200 and body == original, name
        expected = {"png": "image/png", "jpg": "image/jpeg", "wav": "audio/wav"}[name.rsplit(".", 1)[1]]
        assert headers["content-type"] == expected and headers["x-content-type-options"] == "nosniff"
    clip = server["media"]["Rear_Left.wav"]
    status, headers, body = call(server, "GET", f"/api/media/{clip}", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == (ALSA / "Rear_Left.wav").read_bytes()[100:200]
    assert headers["content-range"] == f"bytes 100-199/{(ALSA / 'Rear_Left.wav').stat().st_size}"


def test_thumbnails(server):
    from PIL import Image

    for name, id_ in server["media"].items():
        if name.endswith(".wav"):
            continue
        status, headers, body = call(server, "GET", f"/api/thumb/{id_}")
        assert status == 200 and headers["content-type"] in ("image/jpeg", "image/png")
        img = Image.open(io.BytesIO(body))
        original = Image.open(server["root"] / "photos" / name)
        assert max(img.size) == min(320, max(original.size)), (name, img.size)
        assert np.asarray(img.convert("L")).std() > 10  # a picture, not a blank


def test_unknown_and_textual_ids_are_404(server):
    text_id = get_json(server, "/api/memories?modality=text&limit=1")[1]["memories"][0]["id"]
    for path in (
        f"/api/media/{text_id}",
        "/api/media/no-such-id",
        "/api/media/..%2F..%2Fetc%2Fpasswd",
        f"/api/thumb/{server['media']['Rear_Left.wav']}",
        "/api/media/" + "x" * 500,
        "/../../etc/passwd",
        "/api/nothing",
        "/index.html",
    ):
        status, headers, body = call(server, "GET", path)
        assert status == 404 and headers["content-type"].startswith("application/json"), path
        assert json.loads(body)["error"]


def test_text_search_matches_the_store(server):
    """The API returns what ``MemoryStore.search`` returns in-process: same ids, order and scores."""
    for query, modality in (
        ("what pet does the user have?", "text"),
        ("rear left", "audio"),
        ("a cat", "image"),
    ):
        status, body = post_json(server, "/api/search", {"query": query, "modality": modality, "k": 5})
        assert status == 200 and body["searched"] == [modality]
        got = [(r["id"], r["score"]) for r in body["results"]]
        expected = [(i, s) for i, s, _ in server["expected"][query]]
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert np.allclose([s for _, s in got], [s for _, s in expected], rtol=0, atol=1e-6)
    top = post_json(
        server, "/api/search", {"query": "what pet does the user have?", "modality": "text", "k": 3}
    )
    assert top[1]["results"][0]["content"] == "The user's cat is called Miso"
    rear = post_json(server, "/api/search", {"query": "rear left", "modality": "audio", "k": 1})[1]["results"]
    assert rear[0]["source"].endswith("Rear_Left.wav") and rear[0]["transcript"] == "Rear, left."


def test_search_all_tables(server):
    status, body = post_json(server, "/api/search", {"query": "birthday flowers", "k": 2, "namespace": None})
    assert status == 200 and body["searched"] == ["text", "image", "audio"] and not body["skipped"]
    by = {m: [r for r in body["results"] if r["modality"] == m] for m in ("text", "image", "audio")}
    assert [len(v) for v in by.values()] == [2, 2, 2]
    assert by["text"][0]["content"].startswith("Mum's birthday")
    for rows in by.values():
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    status, body = post_json(server, "/api/search", {"query": "backup", "namespace": "log", "k": 3})
    assert {r["namespace"] for r in body["results"]} == {"log"}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"query": "   "}, "text is empty or whitespace only"),
        ({"query": "x", "k": 0}, "k must be an integer from 1 to 100"),
        ({"query": "x", "k": "five"}, "k must be an integer"),
        ({"query": "x", "modality": "video"}, "unknown modality 'video'"),
        ({"query": "x", "namespace": "n" * 300}, "namespace must be a non-empty string"),
        ({"query": 5}, "query must be a string"),
        ({"query": "a\x00b", "modality": "text"}, "text contains a NUL character"),
        ([1, 2], "the body must be a JSON object"),
    ],
)
def test_bad_search_is_400_with_the_store_message(server, body, message):
    status, answer = post_json(server, "/api/search", body)
    assert status == 400 and message in answer["error"], answer


def test_malformed_search_requests(server):
    status, _, body = call(server, "POST", "/api/search", b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, _, body = call(server, "POST", "/api/search", b'{"query": "x"}', {"Content-Type": "text/plain"})
    assert status == 415
    big = json.dumps({"query": "x" * 100_000}).encode()
    status, _, body = call(server, "POST", "/api/search", big, {"Content-Type": "application/json"})
    assert status == 413 and "limit" in json.loads(body)["error"]


def test_image_search(server):
    chelsea = (server["root"] / "photos" / "chelsea.png").read_bytes()
    status, _, raw = call(server, "POST", "/api/search/image?k=4", chelsea, {"Content-Type": "image/png"})
    body = json.loads(raw)
    assert status == 200 and body["searched"] == ["image"], body
    top = body["results"][0]
    print(f"\nimage query: top hit {top['source'].rsplit('/', 1)[-1]} score {top['score']:.6f}")
    assert top["id"] == server["media"]["chelsea.png"] and top["score"] > 0.9999
    assert all(r["score"] < 0.9999 for r in body["results"][1:])
    status, _, raw = call(server, "POST", "/api/search/image?modality=&k=2", chelsea)
    body = json.loads(raw)  # all tables: images searched; text and audio cannot take an image query
    assert status == 200 and body["searched"] == ["image"] and set(body["skipped"]) == {"text", "audio"}
    assert "cannot search it" in body["skipped"]["text"]


def test_image_search_refusals(server):
    wav = (ALSA / "Rear_Left.wav").read_bytes()
    status, _, raw = call(server, "POST", "/api/search/image", wav, {"Content-Type": "audio/wav"})
    assert status == 400 and "not an image" in json.loads(raw)["error"]
    status, _, raw = call(server, "POST", "/api/search/image", b"not an image at all")
    assert status == 400 and "neither a known image" in json.loads(raw)["error"]
    status, _, raw = call(server, "POST", "/api/search/image", b"")
    assert status == 400 and "empty" in json.loads(raw)["error"]
    # over --max-upload: refused from the Content-Length header, before the body is read
    status, _, raw = call(server, "POST", "/api/search/image", b"\x89PNG" + b"\0" * MAX_UPLOAD)
    assert status == 413 and str(MAX_UPLOAD) in json.loads(raw)["error"]
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.putrequest("POST", "/api/search/image")
    conn.putheader("Authorization", f"Bearer {server['token']}")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


def test_foreign_host_and_origin_are_refused(server):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    port = server["port"]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", ""):
        status, _, body = call(server, "GET", "/api/stats", headers={"Host": host})
        assert status == 403 and "refused Host" in json.loads(body)["error"], host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert call(server, "GET", "/api/stats", headers={"Host": host})[0] == 200
    status, _, body = call(
        server, "POST", "/api/search", b'{"query": "cat"}',
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
    )  # fmt: skip
    assert status == 403 and "refused Origin" in json.loads(body)["error"]
    headers = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"}
    assert call(server, "POST", "/api/search", b'{"query": "cat"}', headers)[0] == 200


def test_missing_store_is_a_clear_error(tmp_path, ui_env):
    proc = subprocess.run(
        [sys.executable, "-m", "aios_memory", "ui", "--store", str(tmp_path / "nope"), "--no-browser"],
        env=ui_env["env"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and f"no store at {tmp_path / 'nope'}" in proc.stderr
    assert not (tmp_path / "nope").exists()


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
    assert {m: t["memories"] for m, t in stats["tables"].items()} == {"text": 2, "image": 1, "audio": 0}
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
        secret = token.rsplit("_", 1)[1]
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


# --- the page in headless Chromium -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(server):
    _need("Debian's chromium", CHROMIUM.exists())
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright", False)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture()
def console_errors() -> list[str]:
    """What the page logged as errors; a test that expects one removes it."""
    return []


@pytest.fixture()
def page(browser, server, console_errors):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = console_errors
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server["login_url"])  # signs in: the token goes into a cookie and leaves the address
    assert page.url == server["url"]
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def screenshot(page, shots: Path, name: str) -> Any:
    """Take, keep (tmp and $AIOS_MEMORY_SCREENSHOTS) and check a screenshot; returns it as an array."""
    from PIL import Image

    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("AIOS_MEMORY_SCREENSHOTS"):
        keep = Path(os.environ["AIOS_MEMORY_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / path.name)
    img = Image.open(path)
    img.load()
    assert img.format == "PNG" and img.size == (VIEWPORT["width"], VIEWPORT["height"])
    arr = np.asarray(img.convert("RGB")).astype(np.float32)
    print(f"\nscreenshot {path}: {img.size}, pixel std {arr.std():.1f}")
    assert arr.std() > 20, f"{name} looks blank"
    return arr


def region_is_drawn(arr: np.ndarray, box: dict[str, float], background: tuple[int, int, int]) -> float:
    """Fraction of pixels inside ``box`` that differ from ``background`` (and the white page)."""
    x0, y0 = int(box["x"]), int(box["y"])
    crop = arr[y0 : y0 + int(box["height"]), x0 : x0 + int(box["width"])]
    assert crop.size
    plain = (np.abs(crop - np.array(background)).max(-1) < 6) | (crop.min(-1) > 250)
    return float(1 - plain.mean())


def card_texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent)")


def test_page_lists_memories_and_pages(page, server, shots):
    header = page.inner_text("#store-path")
    assert header.startswith("owner · all namespaces") and header.endswith("· version 4")  # four commits
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        (f"aiosm_ui_{server['port']}", True, "Strict")
    ]
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the token
    assert page.locator("#grid .card").count() == 24
    assert page.inner_text("#page-info") == "1–24 of 32"
    bodies = card_texts(page, "#grid .card .body")
    assert set(NOTES) <= set(bodies)
    screenshot(page, shots, "ui-browse-text")
    page.click("#next")
    page.wait_for_function("() => document.querySelector('#page-info').textContent === '25–32 of 32'")
    assert page.locator("#grid .card").count() == 8 and page.is_disabled("#next")
    page.select_option("#browse-namespace", "notes")  # back to the first page, of one namespace
    page.wait_for_function("() => document.querySelector('#page-info').textContent === '1–8 of 8'")


def test_memory_content_is_text_not_markup(page):
    hostile = NOTES[-1]
    assert hostile in card_texts(page, "#grid .card .body")
    assert page.evaluate("document.body.dataset.pwned") is None
    assert page.locator("#grid .card.text img, #grid .card.text b").count() == 0


def test_text_search_shows_ranked_scores(page, server, shots):
    page.fill("#q", "what pet does the user have?")
    page.select_option("#search-modality", "text")
    page.click("#search-button")
    page.wait_for_selector("#results .group[data-modality=text] .card")
    cards = page.locator("#results .group[data-modality=text] .card")
    assert cards.count() == 5
    assert cards.first.locator(".body").inner_text() == "The user's cat is called Miso"
    shown = [float(s) for s in card_texts(page, "#results .card .score .value")]
    expected = [round(s, 4) for _, s, _ in server["expected"]["what pet does the user have?"]]
    assert shown == expected and shown == sorted(shown, reverse=True)
    assert "results for “what pet does the user have?”" in page.inner_text("#status")
    arr = screenshot(page, shots, "ui-text-search")
    box = cards.first.locator(".score").bounding_box()
    assert region_is_drawn(arr, box, (255, 255, 255)) > 0.02  # the score and its bar are painted


def test_all_tables_search_groups_results(page):
    page.fill("#q", "rear left")
    page.click("#search-button")
    page.wait_for_selector("#results .group[data-modality=audio] .card")
    groups = page.eval_on_selector_all("#results .group", "gs => gs.map(g => g.dataset.modality)")
    assert groups == ["text", "image", "audio"]
    top = page.locator("#results .group[data-modality=audio] .card").first
    assert top.locator(".transcript").inner_text() == "Rear, left."


def test_image_search_by_file_input(page, server, shots):
    page.set_input_files("#file", str(server["root"] / "photos" / "chelsea.png"))
    page.wait_for_selector("#results .group[data-modality=image] .card")
    top = page.locator("#results .group[data-modality=image] .card").first
    assert top.get_attribute("data-id") == server["media"]["chelsea.png"]
    assert float(top.locator(".score .value").inner_text()) == 1.0
    assert page.locator("#drop-preview").is_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    arr = screenshot(page, shots, "ui-image-search")
    box = top.locator("img.thumb").bounding_box()
    assert region_is_drawn(arr, box, (236, 239, 243)) > 0.9  # the thumbnail is painted, not the placeholder


def test_image_search_by_dropping_a_file(page, server):
    data = base64.b64encode((server["root"] / "photos" / "rocket.jpg").read_bytes()).decode()
    page.evaluate(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "rocket.jpg", {type: "image/jpeg"}));
            const zone = document.getElementById("drop");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector("#results .group[data-modality=image] .card")
    top = page.locator("#results .group[data-modality=image] .card").first
    assert top.get_attribute("data-id") == server["media"]["rocket.jpg"]
    assert "the image rocket.jpg" in page.inner_text("#status")


def test_image_tab_renders_thumbnails(page, server, shots):
    page.click(".tab[data-modality=image]")
    page.wait_for_selector("#grid .card.image img.thumb")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    sizes = page.eval_on_selector_all("#grid img.thumb", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
    assert sorted(alt for alt, _ in sizes) == sorted(f"{n}.{e}" for n, e in PHOTOS.items())
    assert all(0 < w <= 320 for _, w in sizes)
    page.evaluate("window.scrollTo(0, document.getElementById('browse-panel').offsetTop - 10)")
    arr = screenshot(page, shots, "ui-browse-images")
    for i in range(len(PHOTOS)):
        box = page.locator("#grid img.thumb").nth(i).bounding_box()
        assert region_is_drawn(arr, box, (236, 239, 243)) > 0.9, sizes[i]


def test_audio_tab_has_playable_clips(page, server, shots):
    page.click(".tab[data-modality=audio]")
    page.wait_for_selector("#grid .card.audio audio")
    assert page.locator("#grid audio").count() == len(CLIPS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid audio')].every(a => a.readyState >= 1)"
    )
    info = page.eval_on_selector_all(
        "#grid audio",
        """async nodes => Promise.all(nodes.map(async a => {
            const r = await fetch(a.currentSrc);
            const bytes = new Uint8Array(await r.arrayBuffer());
            return {type: r.headers.get('content-type'), n: bytes.length,
                    head: String.fromCharCode(...bytes.slice(0, 4)), duration: a.duration};
        }))""",
    )
    for clip in info:
        assert clip["type"] == "audio/wav" and clip["head"] == "RIFF" and clip["n"] > 10_000
        assert 1.0 < clip["duration"] < 2.0, clip  # Chromium decoded the header: the clip is playable
    transcripts = sorted(card_texts(page, "#grid .card.audio .transcript"))
    assert transcripts == ["Front Center.", "Rear, left."]
    page.evaluate("window.scrollTo(0, document.getElementById('browse-panel').offsetTop - 10)")
    screenshot(page, shots, "ui-browse-audio")


def test_search_error_is_shown(page, console_errors):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_selector("#status.error")
    assert "neither a known image" in page.inner_text("#status")
    assert page.locator("#results .card").count() == 0
    expected = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    assert console_errors == [expected]
    console_errors.clear()


def test_concurrent_requests_agree(server):
    """Threaded server: parallel searches and listings each get the full, same answer."""
    from concurrent.futures import ThreadPoolExecutor

    query = {"query": "what pet does the user have?", "modality": "text", "k": 3}

    def one(i: int) -> Any:
        if i % 2:
            return post_json(server, "/api/search", query)
        return get_json(server, "/api/memories?modality=text&limit=200")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    assert all(status == 200 for status, _ in answers)
    searches = {json.dumps(body, sort_keys=True) for i, (_, body) in enumerate(answers) if i % 2}
    listings = {json.dumps(body, sort_keys=True) for i, (_, body) in enumerate(answers) if not i % 2}
    assert len(searches) == 1 and len(listings) == 1
    assert len(json.loads(listings.pop())["memories"]) == 32


def test_new_commits_show_without_a_restart(server):
    """Runs last: it adds a memory, from another process, to the store the server is serving."""
    from conftest import run_cli

    run_cli("--store", str(server["store"]), "add", "A memory added while the page was open", "-n", "late",
            env=server["env"])  # fmt: skip
    status, page = get_json(server, "/api/memories?modality=text&limit=1")
    assert page["total"] == 33 and page["memories"][0]["content"] == "A memory added while the page was open"
    assert get_json(server, "/api/stats")[1]["namespaces"]["late"] == 1

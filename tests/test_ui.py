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


@pytest.fixture(scope="module")
def server(ui_env: dict[str, Any]) -> Any:
    """`aios-memory ui --store S --port 0 --no-browser` as a real subprocess; yields its base URL."""
    log = (ui_env["root"] / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_memory", "ui", "--store", str(ui_env["store"]), "--port", "0",
         "--no-browser", "--max-upload", str(MAX_UPLOAD)],
        env=ui_env["env"], stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the socket listens
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no URL in {line!r}; log: {(ui_env['root'] / 'server.log').read_text()[-2000:]}"
        yield {"url": match.group(0), "port": int(match.group(1)), "proc": proc, **ui_env}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def call(
    server: dict[str, Any],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(server: dict[str, Any], path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server["url"].rstrip("/") + path, timeout=60) as resp:
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"] == "application/json; charset=utf-8"
        return exc.code, json.loads(exc.read())


def post_json(server: dict[str, Any], path: str, obj: Any) -> tuple[int, Any]:
    status, headers, body = call(
        server, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}
    )
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
    assert status == 200
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
    page.goto(server["url"])
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


def test_page_lists_memories_and_pages(page, shots):
    assert page.inner_text("#store-path").endswith("· version 4")  # four commits
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

"""``aios-memory ui`` for real: the server runs as a subprocess over a store of real text, image and audio
memories; its JSON API is driven with urllib, and its page in headless Chromium (Debian's ``chromium``,
driven by Playwright), with screenshots checked for content and kept when ``$AIOS_MEMORY_SCREENSHOTS`` is set.

Models: the real MiniLM and Whisper base weights; CLIP converted from seeded random weights (no package
ships real CLIP weights), which still embeds the same image to the same vector, so an image query finds
its own photo first with a score of 1.

This file: the JSON API and routes. Tokens and scopes: tests/test_ui_auth.py; the page in Chromium:
tests/test_ui_page.py; the shared store, server fixtures and HTTP helpers: tests/ui_helpers.py.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ui_helpers
from ui_helpers import (
    ALSA,
    CLIPS,
    LOG,
    MAX_UPLOAD,
    NOTES,
    PHOTOS,
    call,
    get_json,
    post_json,
)

# module-scoped fixtures, imported so that pytest finds them in this module
server, ui_env = ui_helpers.server, ui_helpers.ui_env


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
        ("modality=smell", "unknown modality 'smell'"),
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
    # one list fused across the tables (docs/concepts.md "Search"), k in all: as store.search ranks it
    assert len(body["results"]) == 2 and body["results"][0]["content"].startswith("Mum's birthday")
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for r in body["results"]:
        assert {s["table"] for s in r["signals"]} == {r["modality"]} and r["signals"][0]["rank"] >= 1
    status, body = post_json(server, "/api/search", {"query": "rear left", "k": 1})
    assert body["results"][0]["source"].endswith("Rear_Left.wav")  # an audio memory first, by its transcript
    status, body = post_json(server, "/api/search", {"query": "backup", "namespace": "log", "k": 3})
    assert {r["namespace"] for r in body["results"]} == {"log"}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"query": "   "}, "text is empty or whitespace only"),
        ({"query": "x", "k": 0}, "k must be an integer from 1 to 100"),
        ({"query": "x", "k": "five"}, "k must be an integer"),
        ({"query": "x", "modality": "smell"}, "unknown modality 'smell'"),
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

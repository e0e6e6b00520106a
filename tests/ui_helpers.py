"""Shared pieces of the ``aios-memory ui`` tests (tests/test_ui.py, test_ui_auth.py, test_ui_page.py): the
store of real text, image and audio memories, the server as a subprocess, and the HTTP helpers.

The fixtures here are module-scoped and imported into each test module that uses them, so every module gets
its own store and server (tests/test_ui.py adds a memory to its store at the end).
"""

from __future__ import annotations

import http.client
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
for query, modality in (("what pet does the user have?", "text"), ("rear left", "audio"), ("a cat", "image")):
    hits = store.search(query, k=5, modality=modality)
    expected[query] = [(h.id, h.score, h.content or h.source) for h in hits]
rows = store.sql("SELECT id, source FROM image_memories UNION ALL SELECT id, source FROM audio_memories")
print(json.dumps({"expected": expected, "media": {r["source"].rsplit("/", 1)[-1]: r["id"] for r in rows.to_pylist()}}))
"""


def _need(what: str, ok: bool, install: str) -> None:
    """Missing tools skip a developer's run but fail CI, where .ci/run installs them."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required in CI")
        pytest.skip(f"{what} is not installed: {install}")


# --- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ui_env(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model home (real MiniLM + Whisper, seeded CLIP), files to store, and a store built from them."""
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder, real_images

    from aios_memory.plugins import get_provider

    _need("alsa-utils", (ALSA / "Front_Center.wav").exists(), "apt-get install alsa-utils")
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

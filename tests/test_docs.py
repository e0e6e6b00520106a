"""Every ```python block in the README and docs/ runs, in order, per file, in a fresh process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_every_doc_is_collected():
    assert {p.name for p in DOCS} >= {
        "README.md",
        "quickstart.md",
        "concepts.md",
        "plugins.md",
        "sql.md",
        "models.md",
    }


@pytest.fixture(scope="module")
def docs_home(model_home, tmp_path_factory):
    """A model home with the real text and Whisper weights, and a CLIP converted from seeded random weights
    (no package ships real CLIP weights), plus a few real photos to work on."""
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder, real_images

    from aios_memory.plugins import get_provider

    get_provider("whisper-base").install()
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(model_home / "models" / "text", root / "home" / "models" / "text")
    shutil.copytree(model_home / "models" / "whisper", root / "home" / "models" / "whisper")
    make_clip_folder(root / "hf", TINY, seed=7)
    convert_clip(root / "hf", root / "home" / "models" / "clip")
    images = real_images()
    for name in ("chelsea", "rocket", "coffee"):
        (root / "photos" / f"{name}.png").parent.mkdir(exist_ok=True)
        (root / "photos" / f"{name}.png").write_bytes(images[name])
    return root


def _stop_daemons(runtime: Path) -> None:
    """SIGTERM every daemon still holding a lock in ``runtime`` (a lock no one holds: nothing to stop)."""
    import fcntl
    import json
    import signal

    for lock in runtime.glob("*.lock"):
        with lock.open("r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                continue  # its daemon is gone
            except BlockingIOError:
                os.kill(int(json.loads(f.read())["pid"]), signal.SIGTERM)


def _s3_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """For the pages whose examples use object storage: a real S3 server on loopback (AWS_* variables)
    holding an empty bucket ``memories``, as a reader would set one up."""
    server = request.getfixturevalue("seaweed_s3")
    try:
        server.make_bucket("memories")
    except Exception as exc:  # made by an earlier run of this page in the session
        if "BucketAlready" not in type(exc).__name__ + str(exc):
            raise
    return server.env()


S3_PAGES = {"scale-out.md"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(doc, docs_home, tmp_path, request):
    blocks = BLOCK.findall(doc.read_text())
    if not blocks:
        pytest.skip("docs page without Python blocks")
    for png in (docs_home / "photos").glob("*.png"):
        shutil.copy(png, tmp_path / png.name)
    script = "\n".join(f"print('--- block {i}', flush=True)\n{code}" for i, code in enumerate(blocks))
    runtime = tmp_path / "rt"  # the daemons `serve` starts: private to this test, stopped after it
    env = {**os.environ, "AIOS_MEMORY_HOME": str(docs_home / "home"), "AIOS_MEMORY_RUNTIME_DIR": str(runtime)}
    if doc.name in S3_PAGES:
        env |= _s3_env(request)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
        )
    finally:
        _stop_daemons(runtime)
    assert proc.returncode == 0, f"{doc.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    printed = [line for line in proc.stdout.splitlines() if not line.startswith("--- block")]
    assert printed  # the examples print what they show

"""Video through the pipelined import (``aios_memory.ingest``: decode and preprocessing in worker threads)
and through ``aios-memory import`` in a real process; then ``search --json`` shows each segment's times."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_video import FPS, REPO, video_plugin
from video_helpers import SENTENCES, make_video

from aios_memory import MemoryStore
from aios_memory.ingest import ingest

pytest.importorskip("av", reason="the test extra installs av (PyAV)")


@pytest.fixture(scope="module")
def setup(model_home, tmp_path_factory):
    """Videos in a folder (with a text file and a truncated video), a model home holding the real text and
    Whisper models and a seeded CLIP, and the registered video provider composing that CLIP."""
    from aios_memory_clip.provider import ClipProvider
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder

    from aios_memory.plugins import get_provider

    root = tmp_path_factory.mktemp("video-ingest")
    home = root / "home" / "models"
    home.mkdir(parents=True)
    get_provider("whisper-base").install()
    for name in ("text", "whisper"):
        (home / name).symlink_to(model_home / "models" / name)
    make_clip_folder(root / "hf", TINY, seed=5)
    clip = ClipProvider(convert_clip(root / "hf", home / "clip").parent)
    folder = root / "videos"
    folder.mkdir()
    encoded = [
        make_video(folder / "a.mp4", "libx264", "aac", fps=FPS),
        make_video(
            folder / "b.webm",
            "libvpx-vp9",
            "libopus",
            fps=FPS,
            photos=["astronaut", "coffee"],
            sentences=["the bus leaves at noon", "we drink coffee every morning"],
        ),
    ]
    (folder / "note.txt").write_text("a note beside the videos")
    whole = encoded[0].path.read_bytes()
    (folder / "broken.mp4").write_bytes(whole[: len(whole) // 2])
    video_plugin()
    provider = get_provider("clip-whisper-video")
    before = provider._clip_ref
    provider._clip_ref = clip
    yield {"root": root, "folder": folder, "encoded": encoded, "home": root / "home"}
    provider._clip_ref = before


def _rows(store: MemoryStore) -> list[dict]:
    got = store.sql("SELECT source, start_s, end_s, transcript, embedding FROM video_memories").to_pylist()
    return sorted(got, key=lambda r: (r["source"], r["start_s"]))


def test_pipelined_import_equals_add(setup, tmp_path):
    files = sorted(setup["folder"].iterdir())
    piped = MemoryStore(tmp_path / "piped")
    res = ingest(piped, files, workers=2, batch_size=2)
    assert res.added == 3 and len(res.errors) == 1  # two videos and the note; the broken video reported
    assert "broken.mp4" in str(res.errors[0].source) and "truncated" in res.errors[0].message
    one = MemoryStore(tmp_path / "one")
    for f in files:
        if f.suffix != ".txt" and f.name != "broken.mp4":
            one.add(f)
    a, b = _rows(piped), _rows(one)
    assert [(r["source"], r["start_s"], r["end_s"], r["transcript"]) for r in a] == [
        (r["source"], r["start_s"], r["end_s"], r["transcript"]) for r in b
    ]
    assert np.allclose([r["embedding"] for r in a], [r["embedding"] for r in b], atol=1e-6)
    starts = [r["start_s"] for r in a if r["source"].endswith("a.mp4")]
    assert np.abs(np.array(starts) - setup["encoded"][0].scene_starts).max() <= 1 / FPS


def _entry_point_path(root: Path) -> str:
    """A folder for PYTHONPATH declaring the plugin's entry point, for an editable install made before
    pyproject.toml listed it (after a reinstall the installed one is found first and this one is skipped)."""
    import importlib.metadata as md

    if any(ep.name == "video" for ep in md.entry_points(group="aios_memory")):
        return str(REPO / "plugins")
    info = root / "ep" / "aios_memory_video_entry-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aios-memory-video-entry\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[aios_memory]\nvideo = aios_memory_video\n")
    return os.pathsep.join([str(root / "ep"), str(REPO / "plugins")])


def test_cli_import_and_search(setup, tmp_path):
    env = {
        "AIOS_MEMORY_HOME": str(setup["home"]),
        "PYTHONPATH": os.pathsep.join(
            [_entry_point_path(setup["root"]), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    store = str(tmp_path / "store")
    out = run_cli("--store", store, "import", str(setup["folder"]), env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert "imported 3 files as 6 memories" in out.stdout, out.stdout  # 3 + 2 segments and the note
    assert "broken.mp4" in out.stderr
    got = run_cli("--store", store, "search", SENTENCES[1], "--modality", "video", "--json", env=env)
    hits = json.loads(got.stdout)
    assert hits[0]["source"].endswith("a.mp4") and hits[0]["modality"] == "video"
    assert hits[0]["start_s"] == pytest.approx(2.5, abs=1 / FPS) and hits[0]["end_s"] == pytest.approx(
        5.0, abs=0.1
    )
    assert "chair" in hits[0]["transcript"].lower()
    assert "thumbnail" not in hits[0] and "frame_embedding" not in hits[0]  # bytes and vectors stay out
    text = run_cli("--store", store, "search", SENTENCES[1], "--modality", "video", env=env).stdout
    assert "[2.5-5.0s]" in text, text

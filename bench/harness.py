"""Timing helpers shared by the bench scripts (run them as ``python bench/bench_*.py``)."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

# scikit-image photos the benches embed (real photographs shipped by the package)
SKIMAGE_NAMES = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "horse",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
]


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls), in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_rows(rows: list[dict], footer: str = "") -> None:
    """The rows every bench's ``run()`` returns, as one plain-text table."""

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}"

    wa = max([4, *(len(r["area"]) for r in rows)])
    wm = max([7, *(len(r["measure"]) for r in rows)])
    print(
        f"| {'area':<{wa}} | {'measure':<{wm}} | {'ours':>8} | {'ref':>8} | {'ratio':>6} | {'floor':>8} | unit | note"
    )
    print("|" + "|".join("-" * w for w in (wa + 2, wm + 2, 10, 10, 8, 10, 6, 6)) + "|")
    for r in rows:
        print(
            f"| {r['area']:<{wa}} | {r['measure']:<{wm}} | {f(r['ours']):>8} | {f(r['reference']):>8} | "
            f"{f(r['ratio']):>6} | {f(r['floor']):>8} | {r['unit']:<4} | {r['note']}"
        )
    if footer:
        print("\n" + footer)


def cli(run: Callable[[bool], list[dict]], quick_help: str, footer: str) -> None:
    """``python bench/bench_x.py [--quick]``: the machine line, then ``run(quick)``'s rows as a table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=quick_help)
    quick = ap.parse_args().quick
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_rows(run(quick), footer)

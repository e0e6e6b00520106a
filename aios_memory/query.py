"""Queries through DuckDB: one in-memory connection per query over the pinned version's fragments.

Each modality's fragments are registered as an Arrow dataset under ``<modality>_memories`` (embedding
as ``FLOAT[dim]``), so DuckDB itself never opens a file: after setup the connection runs with external
access disabled and its configuration locked, so SQL can neither read nor write anything outside the
store's committed memories. ``embed_text(?)`` is a SQL function backed by the store's text provider.

Limits: ``run(..., timeout=...)`` interrupts DuckDB from a timer thread once a ``Deadline`` passes
(``QueryTimeoutError``), and ``max_rows`` streams the result, reading no more than it returns.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from aios_memory.errors import (
    AiosMemoryError,
    InvalidInputError,
    QueryError,
    QueryTimeoutError,
    StoreCorruptError,
)
from aios_memory.provider import MODALITIES
from aios_memory.schema import TEXT_COLUMN, base_schema
from aios_memory.storage import Manifest, Storage

if TYPE_CHECKING:  # duckdb, pyarrow.compute and pyarrow.dataset load on the first query, not on import
    import duckdb

Params = Sequence[Any] | Mapping[str, Any] | None


def view_name(modality: str) -> str:
    return f"{modality}_memories"


def connect(
    storage: Storage,
    manifest: Manifest,
    embedders: Mapping[str, Any] | None = None,
    namespaces: Sequence[str] | str | None = None,
    sandboxed: bool = True,
    media: bool = True,
) -> duckdb.DuckDBPyConnection:
    """A locked-down connection with one view per modality and the ``embed_*`` SQL functions.

    With ``namespaces`` (one name or a list), the views hold only those namespaces' rows: no SQL on this
    connection (a search's ``where`` predicate included) can see another namespace's memories. With
    ``media=False`` the views have no ``media`` column, so no SQL function can return (or test) the
    stored bytes. ``sandboxed=False`` leaves file access on (for a caller who asked for it explicitly);
    the memories themselves stay immutable either way, since the views read committed Parquet
    fragments through Arrow.
    """
    import duckdb
    import pyarrow.compute as pc

    if isinstance(namespaces, str):
        namespaces = [namespaces]
    con = duckdb.connect(":memory:")
    try:
        for modality in MODALITIES:
            state = manifest.tables.get(modality)
            if state is not None and state.fragments:
                rels = [f.path for f in state.fragments]
                try:
                    source: Any = storage.backend.dataset(rels)
                    if not media:  # a dataset read with a schema that lacks the column never reads it
                        source = storage.backend.dataset(rels, schema=_without_media(source.schema))
                except (FileNotFoundError, pa.ArrowException, OSError) as exc:
                    raise StoreCorruptError(
                        f"store {storage.root} version {manifest.version}: a fragment of {modality} memories "
                        f"is missing or unreadable ({exc}); run `aios-memory doctor`"
                    ) from exc
                if namespaces is not None:
                    source = source.filter(pc.field("namespace").isin(list(namespaces)))
            elif state is not None:  # every row deleted: an empty table that keeps its vector types
                source = base_schema(modality, state.dim, text_dim=state.text_dim).empty_table()
            else:
                source = base_schema(modality, None).empty_table()
            if not media and isinstance(source, pa.Table):
                source = _without_media(source.schema).empty_table()
            con.register(view_name(modality), source)
        for fname, (fn, dim) in (embedders or {}).items():
            _register_embedder(con, fname, fn, dim)
        if sandboxed:
            for statement in _SANDBOX:
                con.execute(statement)
    except BaseException:
        con.close()
        raise
    return con


# No file access, and no directory of the server's in the settings: DuckDB keeps its temp directory
# (<cwd>/.tmp) readable even with external access off, and duckdb_settings() would show the paths.
_SANDBOX = (
    "SET temp_directory = ''",
    "SET home_directory = '/nonexistent'",
    "SET secret_directory = '/nonexistent'",
    "SET extension_directory = '/nonexistent'",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)
EMBED_STEP = 8  # texts an SQL embed function embeds between two checks of the query's deadline


def _without_media(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != "media"], metadata=schema.metadata)


_UDF_ERRORS: dict[int, AiosMemoryError] = {}  # per connection: the typed error a SQL function raised
_DEADLINES: dict[int, Deadline] = {}  # per connection: the deadline of the query running on it


def _register_embedder(
    con: duckdb.DuckDBPyConnection, fname: str, fn: Callable[[list[str]], np.ndarray], dim: int
) -> None:
    import duckdb

    def udf(texts: pa.Array) -> pa.Array:
        try:
            return embed(texts)
        except AiosMemoryError as exc:  # DuckDB drops the cause: keep it for run() to re-raise as it was
            _UDF_ERRORS[id(con)] = exc
            raise

    def embed(texts: pa.Array) -> pa.Array:
        values = texts.to_pylist()
        # DuckDB calls this once per chunk of rows, so a constant argument arrives repeated: embed each
        # distinct string once.
        distinct = sorted({v for v in values if v is not None})
        out = np.zeros((len(values), dim), dtype=np.float32)
        if distinct:
            deadline = _DEADLINES.get(id(con))
            vecs: dict[str, np.ndarray] = {}
            for at in range(0, len(distinct), EMBED_STEP):  # the query's time limit holds in here too
                if deadline is not None:
                    deadline.check("the query")
                step = distinct[at : at + EMBED_STEP]
                vecs.update(zip(step, fn(step), strict=True))
            for i, v in enumerate(values):
                if v is not None:
                    out[i] = vecs[v]
        mask = pa.array([v is None for v in values]) if None in values else None
        return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), dim, mask=mask)

    con.create_function(
        fname,
        udf,
        [duckdb.sqltype("VARCHAR")],
        duckdb.array_type(duckdb.sqltype("FLOAT"), dim),
        type="arrow",
        null_handling="special",
    )


READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})  # names of duckdb.StatementType members
TRUNCATED = b"aios_memory.truncated"  # schema metadata of a result cut at max_rows: b"true"
TIMEOUT_HINT = "raise the timeout (seconds), or leave it out for no limit"
_INTERRUPT_EVERY = 0.05  # seconds between interrupts once a deadline has passed, until the query stops


def timeout_error(what: str, timeout: float, hint: str = TIMEOUT_HINT) -> QueryTimeoutError:
    """The error for ``what`` stopped at its limit: the message says the limit and how to raise it."""
    return QueryTimeoutError(f"{what} ran past its time limit of {timeout:g} s and was stopped; {hint}")


@dataclass(frozen=True)
class Deadline:
    """When a piece of work must be done by: ``Deadline.start(None)`` never expires.

    ``hint`` ends the ``QueryTimeoutError`` message: how the caller can raise the limit.
    """

    timeout: float | None
    expires: float | None  # time.monotonic() value
    hint: str = TIMEOUT_HINT

    @classmethod
    def start(cls, timeout: float | None, *, hint: str = TIMEOUT_HINT) -> Deadline:
        if timeout is None:
            return cls(None, None, hint)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise InvalidInputError(f"timeout must be a number of seconds or None, got {timeout!r}")
        if timeout <= 0:
            raise InvalidInputError(f"timeout must be more than 0 seconds, got {timeout!r}")
        return cls(float(timeout), time.monotonic() + timeout, hint)

    def remaining(self) -> float | None:
        """Seconds left (0 once expired), or None without a limit."""
        return None if self.expires is None else max(0.0, self.expires - time.monotonic())

    def expired(self) -> bool:
        return self.expires is not None and time.monotonic() >= self.expires

    def error(self, what: str) -> QueryTimeoutError:
        return timeout_error(what, self.timeout or 0.0, self.hint)

    def check(self, what: str) -> None:
        """Raise ``QueryTimeoutError`` naming ``what`` once the deadline has passed."""
        if self.expired():
            raise self.error(what)


@contextlib.contextmanager
def interrupt_at(con: duckdb.DuckDBPyConnection, deadline: Deadline) -> Iterator[threading.Event]:
    """While the block runs, a timer thread interrupts ``con`` once ``deadline`` passes, and again every
    50 ms until the block ends (an interrupt that lands between two steps of a query is not lost). The
    event it yields is set once it has fired. The thread is joined on the way out: none is left behind."""
    fired, done = threading.Event(), threading.Event()
    remaining = deadline.remaining()
    if remaining is None:
        yield fired
        return

    def watch() -> None:
        if done.wait(remaining):
            return
        fired.set()
        while True:
            con.interrupt()
            if done.wait(_INTERRUPT_EVERY):
                return

    timer = threading.Thread(target=watch, name="aios-memory-query-deadline", daemon=True)
    timer.start()
    try:
        yield fired
    finally:
        done.set()
        timer.join()


def truncated(table: pa.Table) -> bool:
    """Whether ``run``/``store.sql`` cut this result at ``max_rows`` (more rows were there)."""
    return (table.schema.metadata or {}).get(TRUNCATED) == b"true"


def run(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Params = None,
    *,
    timeout: float | Deadline | None = None,
    max_rows: int | None = None,
) -> pa.Table:
    """Execute one SQL statement with parameters; every DuckDB error becomes a ``QueryError``.

    ``timeout`` (seconds, or a ``Deadline`` shared with other work) interrupts the query when it passes:
    ``QueryTimeoutError``. ``max_rows`` streams the result and stops reading after that many rows, so a
    huge result is never built; a result that had more rows carries ``truncated(table) == True``.
    """
    import duckdb

    deadline = timeout if isinstance(timeout, Deadline) else Deadline.start(timeout)
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
        raise QueryError(f"max_rows must be a non-negative integer or None, got {max_rows!r}")
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("SQL must be a non-empty string")
    check_params(params)
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("SQL is not valid Unicode text") from None
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"invalid SQL: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
    kind = statements[0].type
    if kind.name not in READ_ONLY_STATEMENTS:
        raise QueryError(f"SQL is read-only: {kind.name} statements are not allowed (SELECT or EXPLAIN only)")
    deadline.check("the query")
    _DEADLINES[id(con)] = deadline
    try:
        with interrupt_at(con, deadline) as fired:
            try:
                if max_rows is not None:
                    return _head(con, _stream(con, sql, params, min(max_rows + 1, 1 << 16)), max_rows)
                rel = con.sql(sql, params=params if params is not None else None)
                return rel.to_arrow_table() if rel is not None else pa.table({})
            except (duckdb.Error, pa.ArrowException, OSError) as exc:  # a streamed result fails as OSError
                if fired.is_set() and (
                    isinstance(exc, duckdb.InterruptException) or "Interrupted!" in str(exc)
                ):
                    raise deadline.error("the query") from exc
                raise
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        cause = exc.__cause__ or exc.__context__ or _UDF_ERRORS.pop(id(con), None)
        if isinstance(cause, AiosMemoryError):  # raised inside a SQL function such as embed_text
            raise cause from exc
        text = str(exc)
        if "Values were not provided for the following parameters" in text:
            missing = text.rsplit(":", 1)[-1].strip()
            raise QueryError(
                f"the SQL has ? placeholders without a value (number {missing}); give one parameter per ?"
            ) from exc
        if "Parameter argument/count mismatch" in text or "Parameter/argument count mismatch" in text:
            raise QueryError("more parameters than ? placeholders in the SQL; give one per ?") from exc
        if "Catalog Error: Table with name" in text:
            tables = ", ".join(view_name(m) for m in MODALITIES)
            raise QueryError(f"{text.splitlines()[0]} (the tables: {tables})") from exc
        kind = (
            f"{type(exc).__name__}: " if isinstance(exc, duckdb.Error) else ""
        )  # else DuckDB's text names it
        raise QueryError(f"{kind}{exc}") from exc
    finally:
        _UDF_ERRORS.pop(id(con), None)
        _DEADLINES.pop(id(con), None)


def _stream(con: duckdb.DuckDBPyConnection, sql: str, params: Params, size: int) -> pa.RecordBatchReader:
    """A reader whose rows DuckDB computes as they are read. DuckDB 1.x runs a relation with parameters
    to the end at once but streams ``execute()``; 2.x copies an ``execute()`` result but streams relations."""
    import duckdb

    if int(duckdb.__version__.split(".")[0]) >= 2:
        return con.sql(sql, params=params).to_arrow_reader(size)
    con.execute(sql, params)
    to_reader = getattr(con, "to_arrow_reader", None) or con.fetch_record_batch  # duckdb < 1.5
    return to_reader(size)


def _head(con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader, max_rows: int) -> pa.Table:
    """The first ``max_rows`` rows of a streamed result, marked when more followed; the rest is never
    computed: the query is interrupted (else closing waits for its in-flight tasks) and the reader closed."""
    try:
        batches: list[pa.RecordBatch] = []
        kept, more = 0, False
        for batch in reader:
            if batch.num_rows > max_rows - kept:
                batches.append(batch.slice(0, max_rows - kept))
                more = True
                break
            batches.append(batch)
            kept += batch.num_rows
        table = pa.Table.from_batches(batches, schema=reader.schema)
    finally:
        con.interrupt()  # the next query on ``con`` starts afresh
        reader.close()
    if more:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), TRUNCATED: b"true"})
    return table


def check_params(params: Any) -> None:
    """Parameters are None, a mapping (``$name``) or a list/tuple (``?``); never a bare string or scalar."""
    if params is None or isinstance(params, Mapping):
        return
    if isinstance(params, (str, bytes, bytearray)) or not isinstance(params, Sequence):
        raise QueryError(f"SQL parameters must be a list, a tuple or a dict, got {type(params).__name__}")


def vector_columns(modality: str) -> list[str]:
    """The vector columns of a modality's table: never returned as result columns."""
    cols = ["embedding"]
    if modality in TEXT_COLUMN:
        cols.append(f"{TEXT_COLUMN[modality]}_embedding")
    return cols


def search_sql(modality: str, dim: int, where: str | None, named: bool, column: str = "embedding") -> str:
    """The ranking query over ``column``. The caller's predicate sits in a CTE ahead of ours, so
    positional ``?`` in it bind first; with named parameters ours are ``$aiosm_*``."""
    q, ns, k = ("$aiosm_q", "$aiosm_ns", "$aiosm_k") if named else ("?", "?", "?")
    if column not in vector_columns(modality):
        raise QueryError(f"{modality} memories have no vector column {column!r}")
    view = view_name(modality)
    if where is not None:
        source = f"WITH filtered AS (SELECT * FROM {view} WHERE ({where})) "  # noqa: S608 - predicate is the caller's SQL by contract; values are parameters
        view = "filtered"
    else:
        source = ""
    exclude = ", ".join(["media", *vector_columns(modality)])
    return (
        f"{source}SELECT * EXCLUDE ({exclude}), "  # noqa: S608 - only our own identifiers and an int are formatted
        f"array_cosine_similarity({column}, CAST({q} AS FLOAT[{int(dim)}])) AS score "
        f"FROM {view} WHERE ({ns} IS NULL OR namespace = {ns}) AND {column} IS NOT NULL "
        f"ORDER BY score DESC, id LIMIT {k}"
    )

"""The MCP server's tools: typed parameters and results, so every JSON schema a client lists is exact
(enums, bounds, typed array items and object values, a description per property; no untyped ``{}``),
and their bodies, each a thin call of the store handle ``Served`` resolves for the call.

(No ``from __future__ import annotations`` here: the SDK reads these annotations at registration.)
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypeAliasType

from aios_memory.errors import InvalidInputError, QueryTimeoutError
from aios_memory.mcp_server import K_LIMIT, MAX_UPLOAD_BYTES, ROW_LIMIT, Served, _jsonable, memory_dict

Scalar = str | int | float | bool | None  # a JSON scalar: an SQL parameter, a metadata value
Json = TypeAliasType("Json", str | int | float | bool | None | list["Json"] | dict[str, "Json"])
Modality = Literal["text", "image", "audio", "video"]
Table = Modality  # a result's table
MetadataIn = dict[str, Scalar | list[Scalar]]


def _optional(schema: dict[str, Any]) -> None:
    """An optional parameter's schema is its value's own: a client leaves it out (no null, no default)."""
    schema.pop("default", None)
    branches = [b for b in schema.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches


def _opt(description: str, **constraints: Any) -> Any:
    return Field(description=description, json_schema_extra=_optional, **constraints)


class _Result(BaseModel):
    """A tool's result. A nullable property keeps pydantic's ``anyOf: [{type: T}, {type: null}]``: one
    single-typed branch each, which every client dialect maps (a ``type: [T, "null"]`` array is less
    portable: MCP Inspector --strict warns about it)."""


class Memory(_Result):
    id: str = Field(description="The memory's id.")
    modality: Table = Field(description="Its table: text, image, audio or video.")
    namespace: str = Field(description="The namespace it belongs to.")
    created_at: str = Field(description="When it was stored (ISO 8601).")
    updated_at: str | None = Field(None, description="When it was last updated (ISO 8601), if ever.")
    content: str | None = Field(None, description="The text of a text memory.")
    source: str | None = Field(None, description="Where it came from (a file name or URI), if known.")
    media_type: str | None = Field(None, description="The MIME type of an image or audio memory.")
    metadata: dict[str, Json] = Field(description="Its metadata (a JSON object).")
    score: float | None = Field(
        None,
        description="recall: cosine similarity to the query (after decay), or the fused score (signals).",
    )
    start_s: float | None = Field(
        None, description="Audio and video: where this window or segment starts, in seconds."
    )
    end_s: float | None = Field(
        None, description="Audio and video: where this window or segment ends, in seconds."
    )
    transcript: str | None = Field(None, description="Audio and video: the speech recognised in it.")
    signals: list[dict[str, Json]] | None = Field(
        None,
        description="A fused search: each signal that ranked it (table, signal, its exact score: cosine or "
        "BM25, calibrated score, rank); score is then the fused score.",
    )


class Remembered(_Result):
    ids: list[str] = Field(description="The new memories' ids (long audio: one per 30 s window).")
    modality: Modality = Field(description="What was stored: text, image, audio or video.")


class Recalled(_Result):
    memories: list[Memory] = Field(description="The best matches, best first (order='newest': newest).")


class Forgotten(_Result):
    deleted: int = Field(description="How many memories this call deleted.")
    not_found: list[str] = Field(description="The ids that named no memory (already forgotten, or unknown).")


class Change(_Result):
    operation: Literal["add", "update", "delete"] = Field(description="What happened.")
    at: str = Field(description="When (ISO 8601).")
    version: int | None = Field(
        None,
        description="The store version that committed the change (the add's: none once cleanup removed "
        "the versions that would tell).",
    )
    content: str | None = Field(None, description="The text after the change (none after a delete).")
    metadata: dict[str, Json] | None = Field(None, description="The metadata after the change.")
    source: str | None = Field(None, description="The source after the change.")
    media_type: str | None = Field(None, description="The MIME type after the change.")
    media_sha256: str | None = Field(None, description="The sha256 of the media bytes after the change.")
    transcript: str | None = Field(None, description="Audio: the transcript after the change.")


class History(_Result):
    history: list[Change] = Field(description="The memory's changes, oldest first.")


class SqlResult(_Result):
    columns: list[str] = Field(description="The result's column names.")
    rows: list[dict[str, Json]] = Field(description="The rows, column name to JSON value; bytes summarised.")
    row_count: int = Field(description="How many rows are returned.")
    truncated: bool = Field(description="True when the result had more than max_rows rows.")


class Classified(_Result):
    best: str = Field(description="The most probable label.")
    probabilities: dict[str, float] = Field(description="Each label's probability, best first.")


IMAGES, AUDIO = "PNG, JPEG, GIF, WebP, TIFF, BMP", "WAV, FLAC, Ogg, MP3, AIFF, M4A"


def _data(what: str, formats: str) -> str:
    return (
        f"{what}: the file's bytes, base64-encoded (a data: URL too), at most "
        f"{MAX_UPLOAD_BYTES // 2**20} MiB decoded ({formats}; the format is read from the bytes)."
    )


def _path(what: str) -> str:
    return (
        f"{what}: an absolute path of the file on the server's machine, read only inside directories "
        "the server's operator allows (serve --allow-read); by default none, so send `data` instead."
    )


def register_tools(server: Any, served: Served) -> None:
    """Add the six tools to ``server`` (an ``MCPServer``)."""
    from mcp.types import ToolAnnotations

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    )
    def remember(
        content: Annotated[str | None, _opt("Text to remember. Always stored as text.")] = None,
        data: Annotated[
            str | None, _opt(_data("An image or audio file to remember", f"{IMAGES}; {AUDIO}"))
        ] = None,
        path: Annotated[
            str | None, _opt(_path("An image or audio file to remember"), max_length=4096)
        ] = None,
        media_type: Annotated[
            str | None, _opt("The MIME type of the media (e.g. image/png), checked against the bytes.")
        ] = None,
        filename: Annotated[
            str | None, _opt("A name for the media, kept as the memory's source.", max_length=1024)
        ] = None,
        namespace: Annotated[
            str, Field(description="The namespace to store it in.", min_length=1, max_length=256)
        ] = "default",
        metadata: Annotated[
            MetadataIn | None, _opt("Metadata: an object of JSON scalars or lists of scalars.")
        ] = None,
    ) -> Remembered:
        """Store one memory: text as `content`, or an image or audio file as base64 `data` (or, where
        the operator allows it, a server `path`). Returns the new ids (long audio becomes one memory per
        30 s window) and the modality stored."""
        from aios_memory.modality import sniff

        with served.tool_call() as store:
            given = [
                name for name, v in (("content", content), ("data", data), ("path", path)) if v is not None
            ]
            if len(given) != 1:
                raise InvalidInputError("give exactly one of `content` (text), `data` (base64) or `path`")
            source = filename
            if content is not None:
                item: Any = content
            else:
                item, from_path = served.media(data, path, media_type)
                source = filename or from_path
            kwargs = {} if served.dedupe is None else {"dedupe": served.dedupe}
            ids = store.add_many([item], namespace=namespace, metadata=metadata, sources=[source], **kwargs)
            modality = "text" if content is not None else sniff(item)[0]
            return Remembered(ids=ids, modality=modality)

    @server.tool(annotations=read_only)
    def recall(
        query: Annotated[str | None, _opt("Text to search by.")] = None,
        data: Annotated[
            str | None, _opt(_data("An image or audio to search by", f"{IMAGES}; {AUDIO}"))
        ] = None,
        path: Annotated[str | None, _opt(_path("An image or audio to search by"), max_length=4096)] = None,
        modality: Annotated[
            Modality | None, _opt("One table to search (default: every table the query reaches, fused).")
        ] = None,
        mode: Annotated[
            Literal["vector", "hybrid", "keyword"],
            Field(description="'vector': by meaning; 'hybrid': + exact words (BM25); 'keyword': words only."),
        ] = "vector",
        namespace: Annotated[str | None, _opt("Search only this namespace.", min_length=1)] = None,
        k: Annotated[int, Field(description="How many memories to return.", ge=1, le=K_LIMIT)] = 5,
        where: Annotated[
            str | None, _opt("An SQL predicate over the memory columns, e.g. metadata->>'$.kind' = ?")
        ] = None,
        params: Annotated[list[Scalar] | None, _opt("Values for the ? placeholders of `where`.")] = None,
        half_life_s: Annotated[
            float | None, _opt("Multiply each score by 0.5 ** (age / half_life_s), age in seconds.", gt=0)
        ] = None,
        order: Annotated[
            Literal["score", "newest"],
            Field(description="'score': best first; 'newest': the top k by score, newest first."),
        ] = "score",
        min_score: Annotated[
            float | None, _opt("Drop results scoring below this (after the decay).", ge=-1, le=1)
        ] = None,
    ) -> Recalled:
        """Find memories by meaning: by a text `query`, or by an image or audio given as base64 `data`
        (image→image, text→image with a joint text-image model, audio→audio). `where` filters by an SQL
        predicate over the memory columns with values from `params`. With no `modality`, every table the query
        reaches is ranked in one list (fused; `signals` says which table and signal ranked each memory);
        `mode="hybrid"` adds exact words (BM25). Returns each memory's id, modality, score (cosine
        similarity, or the fused score), namespace, created_at, content/transcript/source and metadata."""
        with served.tool_call() as store:
            given = [name for name, v in (("query", query), ("data", data), ("path", path)) if v is not None]
            if len(given) != 1:
                raise InvalidInputError("give exactly one of `query` (text), `data` (base64) or `path`")
            q: Any = query if query is not None else served.media(data, path)[0]
            try:
                results = store.search(
                    q,
                    k=k,
                    modality=modality,
                    namespace=namespace,
                    where=where,
                    params=params,
                    half_life=half_life_s,
                    order=order,
                    min_score=min_score,
                    mode=mode,
                    timeout=served.sql_timeout,  # the where predicate and the ranking stop with one limit
                )
            except QueryTimeoutError as exc:  # the store's hint names search()'s argument, not the server's
                from aios_memory.query import timeout_error

                hint = "narrow the where predicate; the limit is set by `aios-memory serve --sql-timeout`"
                raise timeout_error("the search", served.sql_timeout or 0.0, hint) from exc
            return Recalled(memories=[Memory(**memory_dict(m)) for m in results])

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    def forget(
        ids: Annotated[
            list[str],
            Field(description="The ids of the memories to delete.", min_length=1, max_length=ROW_LIMIT),
        ],
    ) -> Forgotten:
        """Delete memories by id. Idempotent: ids that name no memory (already forgotten, or unknown)
        are skipped and listed in `not_found`; forgetting twice is the same as once."""
        from aios_memory.errors import MemoryNotFoundError

        with served.tool_call() as store:
            wanted = list(dict.fromkeys(ids))
            missing = []
            for id in wanted:
                try:
                    store.get(id)
                except MemoryNotFoundError:
                    missing.append(id)
            deleted = store.delete(wanted, missing_ok=True)
            return Forgotten(deleted=deleted, not_found=missing)

    @server.tool(annotations=read_only)
    def history(id: Annotated[str, Field(description="The memory's id.", min_length=1)]) -> History:
        """A memory's timeline, oldest first: its add, each update and its delete (if deleted), each
        with `operation`, `at`, `version` and the memory's content and metadata after that change."""
        with served.tool_call() as store:
            return History(history=[Change(**_jsonable(c)) for c in store.history(id)])

    @server.tool(annotations=read_only)
    def sql(
        query: Annotated[
            str, Field(description="One read-only SQL statement (SELECT or EXPLAIN).", min_length=1)
        ],
        params: Annotated[list[Scalar] | None, _opt("Values for the ? placeholders of `query`.")] = None,
        max_rows: Annotated[int, Field(description="The most rows to return.", ge=1, le=ROW_LIMIT)] = 200,
    ) -> SqlResult:
        """Run one read-only SQL statement over the views text_memories, image_memories and
        audio_memories (this client's namespaces only), values as ? placeholders in `params`;
        `embed_text(?)` embeds text for vector SQL. The views have no `media` column unless the operator
        allows it (serve --allow-media-sql); bytes are summarised, never sent. Returns at most `max_rows`
        rows, `row_count` and `truncated`. A query past the server's time limit (10 s by default) stops
        with a QueryTimeoutError: narrow it (WHERE, LIMIT)."""
        from aios_memory.query import timeout_error

        with served.tool_call() as store:
            try:  # one row more than asked for says whether the result was cut
                table = store.sql(query, params, timeout=served.sql_timeout, max_rows=max_rows + 1)
            except QueryTimeoutError as exc:
                hint = (
                    "narrow the query (WHERE, LIMIT); the limit is set by `aios-memory serve --sql-timeout`"
                )
                raise timeout_error("the query", served.sql_timeout or 0.0, hint) from exc
            rows = table.slice(0, max_rows).to_pylist()
            return SqlResult(
                columns=table.column_names,
                rows=_jsonable(rows),
                row_count=len(rows),
                truncated=table.num_rows > max_rows,
            )

    @server.tool(annotations=read_only)
    def classify_image(
        labels: Annotated[
            list[Annotated[str, Field(min_length=1)]],
            Field(
                description="The candidate labels (e.g. 'cat', 'a rocket').",
                min_length=1,
                max_length=ROW_LIMIT,
            ),
        ],
        data: Annotated[str | None, _opt(_data("The image", IMAGES))] = None,
        path: Annotated[str | None, _opt(_path("The image"), max_length=4096)] = None,
    ) -> Classified:
        """Zero-shot classification of an image (base64 `data`, or an allowed server `path`) over
        `labels` with the store's joint text-image model (CLIP). Returns each label's probability, best
        first."""
        from aios_memory.modality import sniff

        with served.tool_call() as store:
            if (data is None) == (path is None):
                raise InvalidInputError("give the image as `data` (base64) or `path`: exactly one")
            image, _ = served.media(data, path)
            if sniff(image)[0] != "image":
                raise InvalidInputError("the media is not an image")
            probs = store.zero_shot_classification(image, list(labels))
            ranked = sorted(probs.items(), key=lambda kv: -kv[1])
            return Classified(best=ranked[0][0], probabilities={label: float(p) for label, p in ranked})

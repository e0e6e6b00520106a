"""The bad-input catalogue: every hostile input through the public API gets a typed error and changes nothing.

Each case is ``(description, call, expected)``: ``expected`` is an ``AiosMemoryError`` subclass the call
must raise, or a checker for the cases that legitimately succeed (a 10 MB text, an SQL-injection string
stored literally). After every case both stores have the same version, the same manifests and the same
rows as before, except for exactly the literal rows a successful case added. Real encoders throughout:
MiniLM for text, Whisper base for audio, a tiny seeded CLIP (converted like the real one) for images, and a
third-party text provider that can be switched into returning NaN, inf or wrong-shaped vectors.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from aios_memory_clip.provider import ClipProvider
from aios_memory_converters.clip import convert_clip
from conftest import png_bytes, run_cli
from PIL import Image
from test_clip_model import TINY, make_clip_folder

from aios_memory import EmbeddingProvider, MemoryStore, hookimpl
from aios_memory.errors import (
    AiosMemoryError,
    EmptyContentError,
    InputTooLargeError,
    InvalidInputError,
    MemoryNotFoundError,
    ModalityError,
    ProviderError,
    QueryError,
    UnsupportedMediaError,
    WeightFileError,
)
from aios_memory.plugins import get_provider, register_plugin, unregister_plugin

EVIL = [
    "x'); DELETE FROM text_memories; --",
    "' OR '1'='1",
    '"; DROP TABLE text_memories; --',
    "'; ATTACH '/tmp/aiosm_evil.db' AS e; COPY text_memories TO '/tmp/aiosm_evil.csv'; --",
    "$aiosm_k ? $1 embed_text('x') read_text('/etc/passwd')",
]
TRAVERSAL = [
    "file:///../../../../etc/passwd",
    "../../../etc/shadow",
    "file://localhost/%2e%2e/%2e%2e/etc/passwd",
]


# --- providers -----------------------------------------------------------------------------------------
class _TinyClip(ClipProvider):
    """The real CLIP provider code over a tiny seeded CLIP converted into a test directory."""

    name = "clip-tiny-hostile"


class _TamperedClip(ClipProvider):
    name = "clip-tampered-hostile"


class _ThirdParty(EmbeddingProvider):
    """A third-party text provider (hashed character trigrams) whose output a case can break on purpose."""

    name = "thirdparty-hostile-16"
    modality = "text"
    dim = 16
    mode = "ok"

    def _embed(self, items: list[Any]) -> Any:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for i, s in enumerate(items):
            s = f"  {s} "
            for j in range(len(s) - 2):
                out[i, zlib.crc32(s[j : j + 3].encode()) % self.dim] += 1
        if self.mode == "nan":
            out[0, 3] = np.nan
        elif self.mode == "inf":
            out[-1, 0] = np.inf
        elif self.mode == "dim":
            out = out[:, :-1]
        elif self.mode == "rows":
            out = out[:-1] if len(out) > 1 else np.concatenate([out, out])
        elif self.mode == "zero":
            out[:] = 0
        elif self.mode == "strings":
            return [["a"] * self.dim for _ in items]
        return out


class _Plugin:
    def __init__(self, providers: list[EmbeddingProvider]) -> None:
        self.providers = providers

    @hookimpl
    def register_embedding_providers(self, register: Callable[[EmbeddingProvider], None]) -> None:
        for p in self.providers:
            register(p)


# --- inputs --------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30_000) -> bytes:
    """A real decompression bomb: a valid 1-bit ``side`` x ``side`` PNG of zeros (~110 KB for 900 M pixels)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def header_only_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def small_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(png_bytes("coffee", 64))
    start = data.index(b"IDAT") + 40
    data[start : start + 200] = bytes(200)  # zeroes inside the compressed stream
    return bytes(data)


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes("astronaut", 64))).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def wav(samples: np.ndarray, sr: int, subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def eight_hour_wav() -> bytes:
    """8 hours of 8-bit silence at 1 kHz: 28.8 MB, under the byte limit, but 8 h once decoded."""
    return wav(np.zeros(8 * 3600 * 1000, dtype=np.float32), 1000, "PCM_U8")


def tone(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def tampered_copy(src: Path, dst: Path) -> Path:
    """A copy of a converted model directory with one byte of one tensor flipped (hashes left as written)."""
    shutil.copytree(src, dst)
    path = dst / "weights.parquet"
    table = pq.read_table(path)
    data = table.column("data").to_pylist()
    blob = bytearray(data[len(data) // 2])
    blob[7] ^= 0x40
    data[len(data) // 2] = bytes(blob)
    col = table.schema.get_field_index("data")
    pq.write_table(
        table.set_column(col, table.schema.field("data"), pa.array(data, table.schema.field("data").type)),
        path,
        compression="NONE",
    )
    return path


# --- the stores ----------------------------------------------------------------------------------------
@dataclass
class Env:
    main: MemoryStore  # MiniLM text, tiny CLIP images, Whisper audio
    third: MemoryStore  # the switchable third-party text provider
    provider: _ThirdParty
    root: Path
    ids: dict[str, str]


@pytest.fixture(scope="module")
def env(model_home: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostile")
    get_provider("whisper-base").install()  # the session home keeps Whisper; CLIP stays uninstalled there
    make_clip_folder(root / "hf", TINY, seed=5)
    weights = convert_clip(root / "hf", root / "clip")
    tampered_copy(weights.parent, root / "clip-tampered")
    third = _ThirdParty()
    plugin = _Plugin([_TinyClip(weights.parent), _TamperedClip(root / "clip-tampered"), third])
    register_plugin(plugin, name="hostile-input-test")
    try:
        main = MemoryStore(root / "main", providers={"image": _TinyClip.name})
        ids = {}
        ids["fact"], ids["other_ns"] = main.add_many(
            ["The user's cat is called Miso"], namespace="assistant"
        ) + [main.add("A secret in another namespace", namespace="private", metadata={"k": "v"})]
        ids["image"] = main.add(png_bytes("chelsea", 48), namespace="assistant")
        ids["audio"] = main.add((tone(1.0), 16000), namespace="assistant")
        other = MemoryStore(root / "third", providers={"text": _ThirdParty.name})
        ids["third"] = other.add("a row from the third-party provider")
        yield Env(main, other, third, root, ids)
    finally:
        unregister_plugin(plugin)
        third.mode = "ok"


def snapshot(store: MemoryStore) -> tuple[int, list[str], list[dict[str, Any]]]:
    rows = []
    for sql in (
        "SELECT * EXCLUDE (embedding) FROM text_memories ORDER BY id",
        "SELECT * EXCLUDE (embedding) FROM image_memories ORDER BY id",
        "SELECT * EXCLUDE (embedding, transcript_embedding) FROM audio_memories ORDER BY id",
    ):
        rows.extend(store.sql(sql).to_pylist())
    manifests = sorted(p.name for p in (store.path / "_versions").glob("*.manifest.json"))
    return store.version, manifests, rows


# --- success checkers ----------------------------------------------------------------------------------
@dataclass
class Stored:
    """The call succeeds; it returns the new id(s), whose rows hold exactly these literal values."""

    content: Any = None
    namespace: str = "default"
    metadata: dict[str, Any] | None = None
    source: Any = None
    media: bytes | None = None


@dataclass
class Returns:
    """The call succeeds without writing; ``check`` validates what it returned."""

    check: Callable[[Any, Env], bool]


Expected = type[AiosMemoryError] | Stored | Returns


@dataclass
class Case:
    description: str
    call: Callable[[Env], Any]
    expected: Expected
    defect: str | None = None  # a defect outside this helper's files: the case is a strict xfail
    slow: bool = False


def _search_ids(result: Any) -> list[str]:
    return [m.id for m in result]


def _never_other_namespace(result: Any, e: Env) -> bool:
    return all(m.namespace == "assistant" for m in result) and e.ids["other_ns"] not in _search_ids(result)


def _latin1(e: Env) -> Path:
    p = e.root / "latin1.txt"
    p.write_bytes("café crème brûlée".encode("latin-1"))
    return p


def _third(e: Env, mode: str, call: Callable[[Env], Any]) -> Any:
    e.provider.mode = mode
    try:
        return call(e)
    finally:
        e.provider.mode = "ok"


def _cli(e: Env, *args: str) -> Any:
    proc = run_cli("--store", str(e.main.path), *args, check=False)
    if proc.returncode == 0:
        return proc.stdout
    tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    name = tail.removeprefix("Error: ").split(":")[0]
    if "Traceback" in proc.stderr:
        raise AssertionError(f"the CLI crashed with a traceback:\n{proc.stderr[-2000:]}")
    import aios_memory.errors as errors

    raise getattr(errors, name, AssertionError)(tail)


CASES: list[Case] = [
    # --- images (tiny CLIP) -------------------------------------------------------------------------
    Case("zero-byte image", lambda e: e.main.add(b""), EmptyContentError),
    Case(
        "truncated PNG (first half)",
        lambda e: e.main.add(png_bytes("coffee", 64)[:900]),
        UnsupportedMediaError,
    ),
    Case("PNG with a corrupt compressed stream", lambda e: e.main.add(corrupt_png()), UnsupportedMediaError),
    Case("truncated JPEG", lambda e: e.main.add(truncated_jpeg()), UnsupportedMediaError),
    Case("GIF magic and nothing else", lambda e: e.main.add(b"GIF89a\x01\x00"), UnsupportedMediaError),
    Case(
        "PNG header claiming 100000x100000",
        lambda e: e.main.add(header_only_png(100_000, 100_000)),
        InputTooLargeError,
    ),
    Case(
        "decompression bomb: valid 30000x30000 1-bit PNG",
        lambda e: e.main.add(bomb_png()),
        InputTooLargeError,
    ),
    Case(
        "1x5000 image (CLIP would resize to 224x1120000)",
        lambda e: e.main.add(small_png(1, 5000)),
        InputTooLargeError,
    ),
    Case("PIL image with no pixels", lambda e: e.main.add(Image.new("RGB", (0, 0))), InvalidInputError),
    Case(
        "corrupt image as a search query",
        lambda e: e.main.search(corrupt_png(), modality="image"),
        UnsupportedMediaError,
    ),
    Case("bomb as a search query", lambda e: e.main.search(bomb_png(), modality="image"), InputTooLargeError),
    Case(
        "image update with truncated bytes",
        lambda e: e.main.update(e.ids["image"], png_bytes("coffee", 64)[:900]),
        UnsupportedMediaError,
    ),
    Case(
        "image content into the text memory",
        lambda e: e.main.update(e.ids["fact"], png_bytes("coffee", 32)),
        ModalityError,
    ),
    Case(
        "weights with a tampered tensor",
        lambda e: MemoryStore(e.third.path, providers={"image": _TamperedClip.name}).add(
            png_bytes("coffee", 32)
        ),
        WeightFileError,
    ),
    # --- audio (Whisper base) -----------------------------------------------------------------------
    Case("WAV cut inside its header", lambda e: e.main.add(wav(tone(), 16000)[:30]), UnsupportedMediaError),
    Case(
        "RIFF/WAVE magic then garbage",
        lambda e: e.main.add(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4),
        UnsupportedMediaError,
    ),
    Case("1-sample audio", lambda e: e.main.add((np.array([0.1], np.float32), 16000)), InvalidInputError),
    Case("1-sample WAV", lambda e: e.main.add(wav(np.array([0.1], np.float32), 16000)), InvalidInputError),
    Case(
        "8-hour audio samples (not allocated: a broadcast view)",
        lambda e: e.main.add((np.broadcast_to(np.float32(0), (8 * 3600 * 16000,)), 16000)),
        InputTooLargeError,
    ),
    Case("8-hour WAV (28.8 MB, 1 kHz 8-bit)", lambda e: e.main.add(eight_hour_wav()), InputTooLargeError),
    Case("sample rate 0", lambda e: e.main.add((tone(), 0)), InvalidInputError),
    Case("sample rate -16000", lambda e: e.main.add((tone(), -16000)), InvalidInputError),
    Case("sample rate 10 MHz", lambda e: e.main.add((tone(), 10_000_000)), InvalidInputError),
    Case("sample rate as a float", lambda e: e.main.add((tone(), 16000.0)), InvalidInputError),
    Case(
        "WAV header at 1 MHz", lambda e: e.main.add(wav(tone(0.05, 1_000_000), 1_000_000)), InvalidInputError
    ),
    Case("NaN samples", lambda e: e.main.add((np.full(16000, np.nan, np.float32), 16000)), InvalidInputError),
    Case(
        "audio update longer than one window",
        lambda e: e.main.update(e.ids["audio"], (tone(31.0), 16000)),
        InvalidInputError,
        slow=True,
    ),
    Case(
        "silent audio is stored (empty transcript)",
        lambda e: e.main.add((np.zeros(16000, np.float32), 16000), namespace="hostile-ok"),
        Stored(namespace="hostile-ok"),
        slow=True,
    ),
    Case(
        "truncated WAV body (header promises more) is stored as decoded",
        lambda e: e.main.add(wav(tone(1.0), 16000)[:20000], namespace="hostile-ok"),
        Stored(namespace="hostile-ok"),
        slow=True,
    ),
    Case(
        "8 kHz audio is resampled and stored",
        lambda e: e.main.add((tone(1.0, 8000), 8000), namespace="hostile-ok"),
        Stored(namespace="hostile-ok"),
        slow=True,
    ),
    # --- text -----------------------------------------------------------------------------------------
    Case("non-UTF-8 bytes", lambda e: e.main.add("café".encode("latin-1")), UnsupportedMediaError),
    Case("lone surrogate in text", lambda e: e.main.add("caf\udce9"), InvalidInputError),
    Case(
        "surrogate-escaped non-UTF-8 file contents",
        lambda e: e.main.add(b"caf\xe9 cr\xe8me".decode("utf-8", "surrogateescape")),
        InvalidInputError,
    ),
    Case("lone surrogate as a search query", lambda e: e.main.search("\ud800"), InvalidInputError),
    Case("NUL in text", lambda e: e.main.add("a\x00b"), InvalidInputError),
    Case(
        "10 MB text is stored",
        lambda e: e.main.add("word " * 2_000_000, namespace="hostile-ok"),
        Stored(content="word " * 2_000_000, namespace="hostile-ok"),
    ),
    Case("10 MB + 1 character", lambda e: e.main.add("x" * 10_000_001), InputTooLargeError),
    Case(
        "CLI: add --file with Latin-1 text",
        lambda e: _cli(e, "add", "--file", str(_latin1(e))),
        UnsupportedMediaError,
    ),
    # --- third-party provider vectors ---------------------------------------------------------------
    Case("provider returns NaN", lambda e: _third(e, "nan", lambda e: e.third.add("x")), ProviderError),
    Case(
        "provider returns inf",
        lambda e: _third(e, "inf", lambda e: e.third.add_many(["x", "y"])),
        ProviderError,
    ),
    Case(
        "provider returns the wrong dimension",
        lambda e: _third(e, "dim", lambda e: e.third.add("x")),
        ProviderError,
    ),
    Case(
        "provider returns the wrong number of rows",
        lambda e: _third(e, "rows", lambda e: e.third.add_many(["x", "y"])),
        ProviderError,
    ),
    Case(
        "provider returns an all-zero vector",
        lambda e: _third(e, "zero", lambda e: e.third.add("x")),
        ProviderError,
    ),
    Case(
        "provider returns strings", lambda e: _third(e, "strings", lambda e: e.third.add("x")), ProviderError
    ),
    Case(
        "provider returns NaN for a query",
        lambda e: _third(e, "nan", lambda e: e.third.search("x")),
        ProviderError,
    ),
    Case(
        "provider returns NaN inside embed_text()",
        lambda e: _third(e, "nan", lambda e: e.third.sql("SELECT embed_text(?) AS v", ["x"])),
        ProviderError,
    ),
    # --- where / sql --------------------------------------------------------------------------------
    Case("unknown column in where", lambda e: e.main.search("cat", where="no_such_column = 1"), QueryError),
    Case(
        "unknown column in sql", lambda e: e.main.sql("SELECT no_such_column FROM text_memories"), QueryError
    ),
    Case(
        "second statement in where",
        lambda e: e.main.search("cat", where="1=1; DELETE FROM text_memories"),
        QueryError,
    ),
    Case(
        "comment swallowing the rest of the query", lambda e: e.main.search("cat", where="1=1 --"), QueryError
    ),
    Case(
        "where breaking out of its parentheses stays in its namespace",
        lambda e: e.main.search("cat", namespace="assistant", where="1=1) OR (1=1"),
        Returns(_never_other_namespace),
    ),
    Case(
        "where subquery over the whole view stays in its namespace",
        lambda e: e.main.search("cat", namespace="assistant", where="id IN (SELECT id FROM text_memories)"),
        Returns(_never_other_namespace),
    ),
    Case(
        "where reading a file",
        lambda e: e.main.search("cat", where="1 = (SELECT count(*) FROM read_text('/etc/passwd'))"),
        QueryError,
    ),
    Case("sql reading a file", lambda e: e.main.sql("SELECT * FROM read_csv('/etc/passwd')"), QueryError),
    Case("sql DELETE", lambda e: e.main.sql("DELETE FROM text_memories"), QueryError),
    Case(
        "sql CTE wrapping a DELETE",
        lambda e: e.main.sql("WITH x AS (DELETE FROM text_memories RETURNING *) SELECT * FROM x"),
        QueryError,
    ),
    Case(
        "sql COPY TO a file", lambda e: e.main.sql("COPY text_memories TO '/tmp/aiosm_evil.csv'"), QueryError
    ),
    Case("sql ATTACH", lambda e: e.main.sql("ATTACH '/tmp/aiosm_evil.db'"), QueryError),
    Case(
        "sql SET re-enabling file access",
        lambda e: e.main.sql("SET enable_external_access = true"),
        QueryError,
    ),
    Case("CLI: sql DELETE", lambda e: _cli(e, "sql", "DELETE FROM text_memories"), QueryError),
    Case(
        "where param of an unsupported type",
        lambda e: e.main.search("cat", where="content = ?", params=[object()]),
        QueryError,
    ),
    Case(
        "where param count mismatch",
        lambda e: e.main.search("cat", where="content = ? AND id = ?", params=["x"]),
        QueryError,
    ),
    Case(
        "where param integer over 128 bits",
        lambda e: e.main.search("cat", where="1 = ?", params=[10**40]),
        QueryError,
    ),
    Case("sql param of an unsupported type", lambda e: e.main.sql("SELECT ?", [object()]), QueryError),
    Case(
        "where params given as an int",
        lambda e: e.main.search("cat", where="content = ?", params=5),
        QueryError,
    ),
    Case(
        "sql params given as an int",
        lambda e: e.main.sql("SELECT ?", 5),
        QueryError,
    ),
    Case(
        "where params given as a str (iterated as characters)",
        lambda e: e.main.search("cat", where="content = ?", params="x"),
        QueryError,
    ),
    Case(
        "named where param shadowing the store's own $aiosm_k",
        lambda e: e.main.search("cat", where="$aiosm_k > 0", params={"aiosm_k": 100}),
        QueryError,
    ),
    Case(
        "lone surrogate in sql text",
        lambda e: e.main.sql("SELECT '\ud800'"),
        QueryError,
    ),
    Case("lone surrogate in sql params", lambda e: e.main.sql("SELECT ?", ["\ud800"]), QueryError),
    # --- SQL injection through every user-facing string (stored literally, or typed errors) -----------
    *[
        Case(
            f"injection as content: {s[:24]}",
            lambda e, s=s: e.main.add(s, namespace="hostile-ok"),
            Stored(content=s, namespace="hostile-ok"),
        )
        for s in EVIL
    ],
    *[
        Case(
            f"injection as namespace: {s[:24]}",
            lambda e, s=s: e.main.add("namespaced", namespace=s),
            Stored(content="namespaced", namespace=s),
        )
        for s in EVIL
    ],
    Case(
        "injection as metadata keys and values",
        lambda e: e.main.add("meta", namespace="hostile-ok", metadata={s: s for s in EVIL}),
        Stored(content="meta", namespace="hostile-ok", metadata={s: s for s in EVIL}),
    ),
    *[
        Case(
            f"injection as source: {s[:24]}",
            lambda e, s=s: e.main.add("sourced", namespace="hostile-ok", source=s),
            Stored(content="sourced", namespace="hostile-ok", source=s),
        )
        for s in EVIL
    ],
    *[
        Case(
            f"injection as where param: {s[:24]}",
            lambda e, s=s: e.main.search("cat", where="content = ? OR source = ?", params=[s, s]),
            Returns(lambda r, e: r == []),
        )
        for s in EVIL
    ],
    *[
        Case(
            f"injection as sql param: {s[:24]}",
            lambda e, s=s: e.main.sql(
                "SELECT ? AS v, count(*) AS n FROM text_memories WHERE content = ?", [s, s]
            ),
            Returns(lambda r, e, s=s: r.to_pylist() == [{"v": s, "n": 0}]),
        )
        for s in EVIL
    ],
    *[
        Case(
            f"injection as search namespace: {s[:24]}",
            lambda e, s=s: e.main.search("secret", namespace=s),
            Returns(lambda r, e: r == []),
        )
        for s in EVIL
    ],
    *[
        Case(f"injection as get id: {s[:24]}", lambda e, s=s: e.main.get(s), MemoryNotFoundError)
        for s in EVIL
    ],
    *[
        Case(
            f"injection as delete id: {s[:24]}",
            lambda e, s=s: e.main.delete([e.ids["fact"], s]),
            MemoryNotFoundError,
        )
        for s in EVIL
    ],
    *[
        Case(
            f"injection as update id: {s[:24]}",
            lambda e, s=s: e.main.update(s, metadata={"x": 1}),
            MemoryNotFoundError,
        )
        for s in EVIL
    ],
    Case(
        "CLI: injection as content",
        lambda e: _cli(e, "search", EVIL[0], "-n", "nobody"),
        Returns(lambda r, e: "Miso" not in r),
    ),
    # --- other strings: namespaces, metadata, sources, ids ------------------------------------------
    Case(
        "lone surrogate as namespace",
        lambda e: e.main.add("x", namespace="\udcff"),
        InvalidInputError,
    ),
    Case(
        "lone surrogate as search namespace",
        lambda e: e.main.search("x", namespace="\udcff"),
        InvalidInputError,
    ),
    Case(
        "lone surrogate in a metadata key",
        lambda e: e.main.add("x", metadata={"\ud800": 1}),
        InvalidInputError,
    ),
    Case(
        "lone surrogate in a metadata value",
        lambda e: e.main.add("x", metadata={"k": "\ud800"}),
        InvalidInputError,
    ),
    Case(
        "metadata nested 5000 deep",
        lambda e: e.main.add("x", metadata={"a": _nested(5000)}),
        InvalidInputError,
    ),
    Case("metadata with NaN", lambda e: e.main.add("x", metadata={"a": float("nan")}), InvalidInputError),
    Case("metadata with bytes", lambda e: e.main.add("x", metadata={"a": b"x"}), InvalidInputError),
    Case(
        "CLI: metadata that is not JSON",
        lambda e: _cli(e, "add", "x", "-m", "{not json"),
        InvalidInputError,
    ),
    Case("lone surrogate as source", lambda e: e.main.add("x", source="\ud800"), InvalidInputError),
    Case("source that is not a string", lambda e: e.main.add("x", source=123), InvalidInputError),
    Case("source with NUL", lambda e: e.main.add("x", source="file:///a\x00b"), InvalidInputError),
    Case(
        "sources given as one str (iterated as characters)",
        lambda e: e.main.add_many(["x", "y"], sources="ab"),
        InvalidInputError,
    ),
    Case(
        "add_many(None)",
        lambda e: e.main.add_many(None),
        InvalidInputError,
    ),
    Case(
        "add_many(5)",
        lambda e: e.main.add_many(5),
        InvalidInputError,
    ),
    Case(
        "add_many metadata that is neither a dict nor a list",
        lambda e: e.main.add_many(["x"], metadata=False),
        InvalidInputError,
    ),
    Case(
        "add_many with one bad item commits none",
        lambda e: e.main.add_many(["fine", "also fine", b"\x00junk"]),
        UnsupportedMediaError,
    ),
    Case(
        "lone surrogate as delete id",
        lambda e: e.main.delete("\ud800"),
        InvalidInputError,
    ),
    Case(
        "lone surrogate as get id",
        lambda e: e.main.get("\ud800"),
        InvalidInputError,
    ),
    Case("non-string id", lambda e: e.main.get(5), InvalidInputError),
    Case("update with nothing", lambda e: e.main.update(e.ids["fact"]), InvalidInputError),
    Case("k = 0", lambda e: e.main.search("x", k=0), InvalidInputError),
    Case("k as a str", lambda e: e.main.search("x", k="5"), InvalidInputError),
    Case("unknown modality", lambda e: e.main.search("x", modality="smell"), InvalidInputError),
    Case("namespace of 257 characters", lambda e: e.main.add("x", namespace="n" * 257), InvalidInputError),
    # --- path traversal -------------------------------------------------------------------------------
    *[
        Case(
            f"traversal source URI is stored, never opened: {s}",
            lambda e, s=s: e.main.add("about a file", namespace="hostile-ok", source=s),
            Stored(content="about a file", namespace="hostile-ok", source=s),
        )
        for s in TRAVERSAL
    ],
    Case(
        "traversal path to a non-media file",
        lambda e: e.main.add(e.root / ".." / ".." / ".." / ".." / ".." / "etc" / "passwd"),
        UnsupportedMediaError,
    ),
    Case(
        "traversal namespace creates no directory",
        lambda e: e.main.add("ns", namespace="../../hostile-escape"),
        Stored(content="ns", namespace="../../hostile-escape"),
    ),
]


def _nested(depth: int) -> Any:
    d: Any = 1
    for _ in range(depth):
        d = [d]
    return d


def _params() -> list[Any]:
    out = []
    for c in CASES:
        marks = []
        if c.defect:
            marks.append(pytest.mark.xfail(strict=True, reason=c.defect))
        if c.slow:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(c, id=c.description, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_hostile_input(env: Env, case: Case) -> None:
    before = {"main": snapshot(env.main), "third": snapshot(env.third)}
    pillow_limit = Image.MAX_IMAGE_PIXELS
    expected = case.expected
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            case.call(env)
        assert isinstance(info.value, AiosMemoryError)
        assert str(info.value), "the error says what was wrong"
        added: list[str] = []
    else:
        result = case.call(env)
        added = []
        if isinstance(expected, Returns):
            assert expected.check(result, env), f"unexpected result {result!r:.300}"
        else:
            added = [result] if isinstance(result, str) else list(result)
            assert added, "a successful add returns ids"
            _check_stored(env, added, expected)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit, "Pillow's decompression-bomb limit is kept"
    after = {"main": snapshot(env.main), "third": snapshot(env.third)}
    if added:  # exactly the new rows, one commit, nothing else touched
        version, manifests, rows = after["main"]
        assert version == before["main"][0] + 1 and len(manifests) == len(before["main"][1]) + 1
        assert [r for r in rows if r["id"] not in added] == before["main"][2]
        assert sorted(r["id"] for r in rows if r["id"] in added) == sorted(added)
        env.main.delete(added)
    else:
        assert after == before
    assert not (env.root.parent / "hostile-escape").exists()


def _check_stored(env: Env, ids: list[str], want: Stored) -> None:
    for id_ in ids:
        m = env.main.get(id_)
        assert m.namespace == want.namespace
        if want.content is not None:
            assert m.content == want.content
        assert m.metadata == (want.metadata or {})
        assert m.source == want.source
        if m.modality == "audio":
            assert m.media and m.media_type == "audio/wav"
    if want.content is not None:  # the literal string matches itself through SQL, as a value
        got = env.main.sql(
            "SELECT id FROM text_memories WHERE content = ? AND namespace = ?", [want.content, want.namespace]
        )
        assert sorted(got.column("id").to_pylist()) == sorted(ids)


def test_catalogue_covers_the_issue() -> None:
    """Each item of the issue's list has at least one case."""
    text = " ".join(c.description.lower() for c in CASES)
    for word in (
        "truncated png", "corrupt", "zero-byte", "100000x100000", "decompression bomb", "truncated wav",
        "silent", "1-sample", "8-hour", "sample rate", "non-utf-8", "10 mb", "nan", "inf", "wrong dimension",
        "unknown column", "injection as content", "injection as namespace", "injection as metadata",
        "injection as source", "injection as where param", "injection as sql param", "injection as get id",
        "traversal source", "tampered tensor",
    ):  # fmt: skip
        assert word in text, word
    assert len({c.description for c in CASES}) == len(CASES), "descriptions are unique test ids"
    assert json.dumps([c.description for c in CASES])  # ids are plain strings

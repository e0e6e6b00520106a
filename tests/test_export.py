"""Other engines read exactly the committed rows: ``store.files()`` lists a version's fragments (DuckDB,
pyarrow, pandas, Polars read them), and ``export`` writes a version as plain Parquet or Delta Lake, read
back by those engines and ``deltalake`` with the same rows, vectors and provider metadata. A real store:
the real MiniLM text model and a CLIP converted from seeded weights, a few texts and two photographs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aios_memory_converters.clip import convert_clip
from conftest import run_cli
from deltalake import DeltaTable
from test_clip_model import TINY, make_clip_folder, real_images

from aios_memory import MemoryStore
from aios_memory import export as export_module
from aios_memory.errors import AccessDeniedError, InvalidInputError, StoreCorruptError
from aios_memory.export import DESCRIPTOR, export
from aios_memory.scope import Scope

TEXTS = ["The user's cat is called Miso", "Flight to Tokyo on April 3", "Dentist on March 14", "Likes tea"]


@pytest.fixture(scope="module")
def built(model_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """A store with a history: v1 texts, v2 two photos, v3 an update, v4 a delete, v5 a text,
    v6 the text table compacted."""
    root = tmp_path_factory.mktemp("export")
    home = root / "home"
    shutil.copytree(model_home / "models" / "text", home / "models" / "text")
    make_clip_folder(root / "hf", TINY, seed=5)
    convert_clip(root / "hf", home / "models" / "clip")
    before = os.environ["AIOS_MEMORY_HOME"]
    os.environ["AIOS_MEMORY_HOME"] = str(home)
    try:
        store = MemoryStore(root / "store")
        ids = store.add_many(TEXTS, namespace="a")
        images = real_images()
        store.add_many([images["chelsea"], images["coffee"]], namespace="b")
        store.update(ids[0], "The user's cat is called Mochi")
        store.delete(ids[2])
        store.add("Prefers window seats", namespace="b")
        store.compact("text")
        yield store
    finally:
        os.environ["AIOS_MEMORY_HOME"] = before
        from aios_memory.plugins import get_providers

        for provider in get_providers().values():  # loaded from this module's home: not the session's
            provider.unload()


def _rows(store: MemoryStore, modality: str, version: int | None = None) -> dict[str, dict]:
    """id -> row of the store's own SQL view (pinned to ``version`` if given), vectors as arrays."""
    view = MemoryStore(store.path, create=False)
    if version is not None:
        view.checkout(version)
    table = view.sql(f"SELECT * FROM {modality}_memories")  # noqa: S608 - a fixed name
    return {r["id"]: r for r in table.to_pylist()}


def _same(store_rows: dict[str, dict], table: pa.Table, vector_width: int) -> None:
    """``table`` (any engine's result, as Arrow) holds exactly ``store_rows``: ids, texts, vectors."""
    got = {r["id"]: r for r in table.to_pylist()}
    assert got.keys() == store_rows.keys()
    for id_, row in got.items():
        want = store_rows[id_]
        assert row["content"] == want["content"] and row["namespace"] == want["namespace"]
        assert row["created_at"] == want["created_at"] and row.get("media") == want.get("media")
        vec = np.asarray(row["embedding"], np.float32)
        assert vec.shape == (vector_width,)
        assert np.array_equal(vec, np.asarray(want["embedding"], np.float32))


def test_files_lists_exactly_the_committed_fragments(built):
    store = built
    storage = store._storage
    for v in range(1, store.version + 1):
        m = storage.read_manifest(v)
        want = [str(storage.root / f.path) for _, t in sorted(m.tables.items()) for f in t.fragments]
        assert store.files(version=v) == want
        for mod in m.tables:
            files = store.files(mod, version=v)
            assert all(f.endswith(".parquet") and "/_history/" not in f for f in files)
            got = duckdb.connect().execute("SELECT id FROM read_parquet(?)", [files]).fetchall()
            assert sorted(i for (i,) in got) == sorted(_rows(store, mod, v))  # same rows, no duplicate
    # the fragments that the update, the delete and the compaction replaced are gone from the list
    live = set(store.files())
    superseded = {
        str(storage.root / f.path)
        for v in range(1, store.version)
        for t in storage.read_manifest(v).tables.values()
        for f in t.fragments
    } - live
    assert len(superseded) >= 3 and not superseded & live
    con = duckdb.connect()
    [(n,)] = con.execute("SELECT count(*) FROM read_parquet(?)", [store.files("text")]).fetchall()
    assert n == store.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py() == 4
    [(glob,)] = con.execute(
        f"SELECT count(*) FROM read_parquet('{store.path}/data/text/*.parquet')"
    ).fetchall()
    assert glob > n  # the pitfall docs/other-engines.md shows: a glob reads superseded fragments
    with pytest.raises(InvalidInputError):
        store.files("smell")  # not a modality


def test_parquet_export_reads_back_in_every_engine(built, tmp_path):
    store = built
    report = export(store, tmp_path / "snap", progress=False)
    assert report["version"] == store.version and set(report["tables"]) == {"text", "image"}
    assert json.loads((tmp_path / "snap" / DESCRIPTOR).read_text())["tables"] == report["tables"]
    for mod, width in (("text", 384), ("image", 512)):
        want = _rows(store, mod)
        folder = tmp_path / "snap" / mod
        files = sorted(str(p) for p in folder.glob("*.parquet"))
        assert report["tables"][mod]["rows"] == len(want) and len(files) == 1
        schema = pq.read_schema(files[0])
        assert schema.field("embedding").type == pa.list_(pa.field("element", pa.float32()), width)
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        state = store._storage.read_manifest().tables[mod]
        assert meta["aios_memory.provider"] == state.provider and meta["aios_memory.dim"] == str(width)
        assert json.loads(meta["aios_memory.fingerprint"]) == state.fingerprint
        assert json.loads(meta["aios_memory"])["dim"] == width  # the store's own key, kept
        _same(want, pq.read_table(folder), width)
        _same(
            want,
            duckdb.connect().sql("SELECT * FROM read_parquet($f)", params={"f": files}).to_arrow_table(),
            width,
        )
        _same(want, pa.Table.from_pandas(pd.read_parquet(folder), preserve_index=False), width)
        df = pl.read_parquet(files)
        assert df.schema["embedding"] == pl.Array(pl.Float32, width)
        _same(want, df.to_arrow(), width)


def test_delta_export_reads_back_with_its_widths_and_provider(built, tmp_path):
    store = built
    report = export(store, tmp_path / "delta", "delta", progress=False)
    m = store._storage.read_manifest()
    for mod, width in (("text", 384), ("image", 512)):
        want = _rows(store, mod)
        path = str(tmp_path / "delta" / mod)
        table = DeltaTable(path)
        props = table.metadata().configuration
        state = m.tables[mod]
        assert props["aios_memory.provider"] == state.provider and props["aios_memory.dim"] == str(width)
        assert json.loads(props["aios_memory.fingerprint"]) == state.fingerprint
        assert json.loads(props["aios_memory.vector_columns"]) == {"embedding": width}
        assert (
            props["aios_memory.store_version"] == str(m.version)
            and table.metadata().name == f"{mod}_memories"
        )
        assert f"FLOAT[{width}]" in table.metadata().description
        field = table.to_pyarrow_dataset().schema.field("embedding")
        assert field.type == pa.list_(pa.field("element", pa.float32())) and field.metadata == {
            b"aios_memory.dim": str(width).encode()
        }
        fixed = pa.list_(pa.float32(), json.loads(props["aios_memory.vector_columns"])["embedding"])
        arrow = table.to_pyarrow_table()
        arrow = arrow.set_column(
            arrow.schema.get_field_index("embedding"), "embedding", arrow["embedding"].cast(fixed)
        )
        _same(want, arrow, width)
        df = pl.read_delta(path).with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, width)))
        _same(want, df.to_arrow(), width)
        con = duckdb.connect()
        con.register("delta_view", table.to_pyarrow_dataset())
        sql = f"SELECT * REPLACE (embedding::FLOAT[{width}] AS embedding) FROM delta_view"  # noqa: S608
        _same(want, con.sql(sql).to_arrow_table(), width)
        assert report["tables"][mod]["files"] == sorted(Path(u).name for u in table.file_uris())


def test_a_pinned_version_exports_that_version(built, tmp_path):
    store = built
    export(store, tmp_path / "v1", version=1, progress=False)
    assert set(os.listdir(tmp_path / "v1")) == {"text", DESCRIPTOR}  # no image table at version 1
    _same(_rows(store, "text", 1), pq.read_table(tmp_path / "v1" / "text"), 384)
    assert len(_rows(store, "text", 1)) == len(TEXTS)
    pinned = MemoryStore(store.path, create=False)
    pinned.checkout(3)  # the update, before the delete
    report = export(pinned, tmp_path / "v3", "delta", modality="text", progress=False)
    assert report["version"] == 3 and set(report["tables"]) == {"text"}
    got = DeltaTable(str(tmp_path / "v3" / "text")).to_pyarrow_table()
    assert sorted(got.column("id").to_pylist()) == sorted(_rows(store, "text", 3))
    assert "The user's cat is called Mochi" in got.column("content").to_pylist()


def test_existing_dest_is_refused_and_nothing_is_written(built, tmp_path):
    store = built
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("x")
    for dest, fmt in [(full, "parquet"), (full, "delta"), (tmp_path / "a-file", "parquet")]:
        with pytest.raises(InvalidInputError, match="nothing written"):
            export(store, dest, fmt, progress=False)
    with pytest.raises(InvalidInputError, match="inside the store"):
        export(store, store.path / "export", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a-file", "full"] and os.listdir(full) == ["keep.txt"]
    assert not (store.path / "export").exists()
    for bad in [dict(format="csv"), dict(modality="video"), dict(version=-1), dict(modality="audio")]:
        with pytest.raises(InvalidInputError):
            export(store, tmp_path / "new", progress=False, **bad)
    assert sorted(os.listdir(tmp_path)) == ["a-file", "full"]
    (tmp_path / "empty").mkdir()  # an empty directory is replaced by the finished export
    export(store, tmp_path / "empty", modality="text", progress=False)
    assert sorted(os.listdir(tmp_path / "empty")) == [DESCRIPTOR, "text"]


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_a_failure_midway_leaves_no_export(built, tmp_path, monkeypatch, fmt):
    store = built
    real, calls = export_module.read_fragment, []

    def flaky(storage, frag, columns=None):
        calls.append(frag.path)
        if len(calls) == 2:  # the second table's fragment: the first table is already written
            raise StoreCorruptError(f"fragment {frag.path} is unreadable (simulated)")
        return real(storage, frag, columns)

    monkeypatch.setattr(export_module, "read_fragment", flaky)
    with pytest.raises(StoreCorruptError, match="simulated"):
        export(store, tmp_path / "out", fmt, progress=False)
    assert os.listdir(tmp_path) == []  # neither dest nor the temp directory beside it


def test_scoped_handles_cannot_list_or_export(built, tmp_path):
    scoped = built.scoped(Scope.of(["a"]))
    with pytest.raises(AccessDeniedError):
        scoped.files()
    with pytest.raises(AccessDeniedError):
        export(scoped, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_without_media_in_parts_and_an_emptied_table(built, tmp_path, monkeypatch):
    store = built
    monkeypatch.setattr(export_module, "PART_ROWS", 2)
    monkeypatch.setattr(export_module, "ROW_GROUP_ROWS", 1)
    report = export(store, tmp_path / "nomedia", include_media=False, progress=False)
    images = pq.read_table(tmp_path / "nomedia" / "image")
    assert "media" not in images.column_names and images.num_rows == 2
    assert report["tables"]["text"]["files"] == [f"part-0000{i}.parquet" for i in range(2)]
    assert pq.read_table(tmp_path / "nomedia" / "text").num_rows == 4
    assert pq.ParquetFile(tmp_path / "nomedia" / "text" / "part-00001.parquet").num_row_groups == 2
    export(store, tmp_path / "nomedia-delta", "delta", modality="image", include_media=False, progress=False)
    assert "media" not in DeltaTable(str(tmp_path / "nomedia-delta" / "image")).schema().to_arrow().names
    emptied = MemoryStore(tmp_path / "emptied")  # every row deleted: a table of no rows keeps its types
    emptied.delete(emptied.add_many(["one", "two"]))
    for fmt in ("parquet", "delta"):
        export(emptied, tmp_path / f"emptied-{fmt}", fmt, progress=False)
    empty = pq.read_table(tmp_path / "emptied-parquet" / "text")
    assert empty.num_rows == 0 and empty.schema.field("embedding").type.list_size == 384
    table = DeltaTable(str(tmp_path / "emptied-delta" / "text"))
    assert (
        table.to_pyarrow_table().num_rows == 0 and table.metadata().configuration["aios_memory.dim"] == "384"
    )


def test_cli_files_and_export(built, tmp_path):
    store = built
    listed = run_cli("--store", str(store.path), "files").stdout.split()
    assert listed == store.files()
    doc = json.loads(
        run_cli("--store", str(store.path), "files", "--modality", "text", "--version", "2", "--json").stdout
    )
    assert doc == {"version": 2, "modality": "text", "files": store.files("text", version=2)}
    out = run_cli(
        "--store", str(store.path), "export", "--format", "delta", "--version", "4", str(tmp_path / "d")
    )
    assert json.loads(out.stdout)["version"] == 4
    got = DeltaTable(str(tmp_path / "d" / "text")).to_pyarrow_table().column("id").to_pylist()
    assert sorted(got) == sorted(_rows(store, "text", 4))
    again = run_cli("--store", str(store.path), "export", str(tmp_path / "d"), check=False)
    assert again.returncode != 0 and "InvalidInputError" in again.stderr and "not empty" in again.stderr
    missing = run_cli("--store", str(tmp_path / "no-store"), "files", check=False)
    assert missing.returncode != 0 and not (tmp_path / "no-store").exists()

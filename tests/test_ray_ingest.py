"""Distributed ingestion on Ray Data, with real Ray processes: a head and a worker node (one CPU each, on
loopback, no dashboard, no usage reports) shared by the module. A job of images, audio and texts commits
one version whose rows equal `aios-memory import`'s; a worker node lost mid-job commits nothing and a
re-run succeeds; a provider mismatch is refused with nothing committed; the core never imports Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aios_memory_converters.clip import convert_clip
from conftest import png_bytes, run_cli
from ray_jobs import held_job, settled, texts_folder, wait_for, worker_node_back
from test_clip_model import TINY, make_clip_folder, real_images

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError, ProviderMismatchError

ray = pytest.importorskip("ray", reason='ray is not installed: pip install -e ".[test]"')
ALSA = Path("/usr/share/sounds/alsa")
TEXTS = [f"note {i}: the {w} fox jumps over the lazy dog" for i, w in enumerate(["red", "quick", "old"])]
ENV = {  # loopback only, no usage reports; the nodes and the CLI's children inherit these
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's switch for "this host's loopback address"
    "RAY_DEDUP_LOGS": "1",
}

pytestmark = pytest.mark.skipif(
    not (ALSA / "Front_Center.wav").exists(), reason="alsa-utils is not installed: apt-get install alsa-utils"
)


@pytest.fixture(scope="module")
def home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MiniLM (the session's), a tiny seeded CLIP and the real Whisper base."""
    from aios_memory_whisper.provider import WhisperProvider

    root = tmp_path_factory.mktemp("ray_home")
    shutil.copytree(model_home / "models" / "text", root / "models" / "text")
    make_clip_folder(root / "hf", TINY, seed=5)
    convert_clip(root / "hf", root / "models" / "clip")
    WhisperProvider(root / "models" / "whisper").install()
    return root


@pytest.fixture(scope="module")
def cluster(home: Path) -> Iterator[Any]:
    """Head + one worker node as real processes; the model home set before they start (they inherit it)."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in [*ENV, "AIOS_MEMORY_HOME"]}
    os.environ.update(ENV, AIOS_MEMORY_HOME=str(home))
    loopback_only = ray_constants.ENABLE_RAY_CLUSTER  # read when Ray was imported: set it for this process
    ray_constants.ENABLE_RAY_CLUSTER = False
    loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
    c = Cluster(
        initialize_head=True,
        head_node_args={**loopback, "include_dashboard": False},
    )
    c.add_node(**loopback)
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        procs = [
            p.process for n in [c.head_node, *c.worker_nodes] for ps in n.all_processes.values() for p in ps
        ]
        ray.shutdown()
        c.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = loopback_only
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        deadline = time.monotonic() + 60
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(p.poll() is not None for p in procs), "Ray processes outlived the cluster"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs (PNG and JPEG), the ALSA clips, a few texts, and a file no importer accepts."""
    import io

    from PIL import Image

    root = tmp_path_factory.mktemp("ray_files")
    (root / "images").mkdir()
    for n, (name, data) in enumerate(sorted(real_images().items())):
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((96 + 8 * n, 96))
        img.save(root / "images" / f"{n:02d}_{name}.{'jpg' if n % 2 else 'png'}")
    shutil.copytree(
        ALSA, root / "audio", ignore=lambda d, names: [x for x in names if not x.endswith(".wav")]
    )
    (root / "texts").mkdir()
    for i, text in enumerate(TEXTS):
        (root / "texts" / f"{i}.txt").write_text(text)
    (root / "texts" / "noise.bin").write_bytes(bytes(range(128, 256)) * 4)  # neither media nor UTF-8
    return root


def _rows(store: MemoryStore, modality: str, by_name: bool = False) -> dict[str, dict[str, Any]]:
    rows = store.sql(f"SELECT * FROM {modality}_memories").to_pylist()
    return {r["source"].rsplit("/", 1)[-1] if by_name else r["source"]: r for r in rows}


def _same_rows(ours: MemoryStore, theirs: MemoryStore, by_name: bool = False) -> dict[str, int]:
    """Every row equal (ids, timestamps, and by_name: sources, aside): content, media, metadata, transcript,
    windows; vectors bit-equal float32 or (not by_name: thread rounding) cosine >= 0.99999. Rows per table."""
    counts = {}
    for mod in ("text", "image", "audio"):
        a, b = _rows(ours, mod, by_name), _rows(theirs, mod, by_name)
        assert a.keys() == b.keys(), mod
        for source, row in a.items():
            other = b[source]
            for k, v in row.items():
                if k in ("id", "created_at", "updated_at") or (by_name and k == "source"):
                    continue
                if k.endswith("embedding") and v is not None and other[k] is not None:
                    u, w = np.asarray(v, np.float32), np.asarray(other[k], np.float32)
                    assert np.array_equal(u, w) or (not by_name and float(u @ w) >= 0.99999), (source, k)
                else:
                    assert v == other[k], (source, k)
        counts[mod] = len(a)
    return counts


def test_importing_the_package_and_opening_a_store_imports_no_ray(tmp_path):
    script = (
        "import sys, aios_memory, aios_memory.distributed, aios_memory.distributed.commands\n"
        "from aios_memory import MemoryStore\n"
        f"MemoryStore({str(tmp_path / 's')!r}).stats()\n"
        "from aios_memory.cli import cli\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_job_is_one_version_equal_to_the_import(cluster, home, folder, tmp_path):
    from aios_memory.distributed import ingest_ray

    store = MemoryStore(tmp_path / "ray")
    store.add("already here")
    report = ingest_ray(store.path, [folder], actors=2, batch_size=4, progress=False)
    assert (report["base_version"], report["version"], store.version) == (1, 2, 2)  # ONE new version
    assert [e["source"].rsplit("/", 1)[-1] for e in report["errors"]] == ["noise.bin"]
    assert "not an image, audio or UTF-8 text file" in report["errors"][0]["error"]
    assert report["added"] == report["files"] - 1 == len(list(folder.rglob("*.*"))) - 1
    assert store.verify()["ok"] and not store.verify()["orphans"]

    run_cli("--store", str(tmp_path / "import"), "import", str(folder), env={"AIOS_MEMORY_HOME": str(home)})
    imported = MemoryStore(tmp_path / "import")
    store.delete([m.id for m in store.search("already here", k=1)])  # the import's store has no such row
    counts = _same_rows(store, imported)
    assert counts == {"text": len(TEXTS), "image": len(real_images()), "audio": len(list(ALSA.glob("*.wav")))}
    assert report["modalities"]["audio"]["rows"] == counts["audio"]
    transcripts = [r["transcript"] for r in _rows(store, "audio").values()]
    assert any(t and "front" in t.lower() for t in transcripts)


def test_a_job_into_a_store_on_s3(cluster, folder, tmp_path, s3_store_uri):
    """The same code with ``s3://`` (a real S3 server on loopback): the workers write the fragments there,
    the driver commits one version; the rows equal a local store's."""
    from aios_memory.distributed import ingest_ray

    uri, options = s3_store_uri
    report = ingest_ray(uri, [folder / "texts", folder / "images"], storage_options=options, progress=False)
    counts = {"text": len(TEXTS), "image": len(real_images()), "audio": 0}
    assert (report["base_version"], report["version"], report["rows"]) == (0, 1, sum(counts.values()))
    remote = MemoryStore(uri, storage_options=options)
    assert remote.version == 1 and remote.verify()["ok"]
    local = tmp_path / "local"
    ingest_ray(local, [folder / "texts", folder / "images"], progress=False)
    assert _same_rows(remote, MemoryStore(local)) == counts


def test_a_job_from_s3_into_s3(cluster, seaweed_s3, s3_bucket, s3_store_uri, tmp_path, tmp_path_factory):
    """Sources on S3: a prefix's objects, read by the actors, make one version equal to a local folder's."""
    from aios_memory.distributed import ingest_ray

    (uri, options), wav = s3_store_uri, (ALSA / "Front_Center.wav").read_bytes()
    files = {"a.png": png_bytes("chelsea", 64), "b.png": png_bytes("astronaut", 80), "c.wav": wav}
    files |= {"d.txt": TEXTS[0].encode(), "e.txt": TEXTS[1].encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        seaweed_s3.client().put_object(Bucket=s3_bucket, Key=f"inputs/{name}", Body=data)
    for empty in ("nothing/", "inputs/a"):  # no such prefix; "inputs/a" is not "inputs/a.png"'s prefix
        with pytest.raises(InvalidInputError, match="no objects under"):  # before anything is written
            ingest_ray(uri, [f"s3://{s3_bucket}/{empty}"], storage_options=options, progress=False)
    report = ingest_ray(uri, [f"s3://{s3_bucket}/inputs/"], storage_options=options, progress=False)
    ingest_ray(local := tmp_path_factory.mktemp("local"), [tmp_path], progress=False)
    counts = _same_rows(remote := MemoryStore(uri, storage_options=options), MemoryStore(local), by_name=True)
    assert counts == {"text": 2, "image": 2, "audio": 1} and report["version"] == remote.version == 1
    assert {s for m in counts for s in _rows(remote, m)} == {f"s3://{s3_bucket}/inputs/{n}" for n in files}


def test_cli_ingest_on_the_cluster_and_locally(cluster, home, folder, tmp_path):
    texts = folder / "texts"
    env = {"AIOS_MEMORY_HOME": str(home), "RAY_ADDRESS": cluster.address}
    out = run_cli("--store", str(tmp_path / "ray"), "ingest", "--actors", "2", str(texts), env=env)
    assert f"ingested {len(TEXTS)} files as {len(TEXTS)} memories" in out.stdout and "version 1" in out.stdout
    assert "noise.bin" in out.stderr and len(out.stderr.splitlines()) < 150  # progress, not a flood
    local = run_cli("--store", str(tmp_path / "local"), "ingest", "--engine", "local", str(texts), env=env)
    assert f"imported {len(TEXTS)} files" in local.stdout
    _same_rows(MemoryStore(tmp_path / "ray"), MemoryStore(tmp_path / "local"))


def test_a_table_of_another_provider_refuses_the_job(cluster, folder, tmp_path):
    import trigram_provider

    from aios_memory.distributed import ingest_ray

    trigram_provider.register()
    store = MemoryStore(tmp_path / "s", providers={"text": trigram_provider.NAME})
    store.add("embedded by the trigram provider")
    with pytest.raises(ProviderMismatchError, match=trigram_provider.NAME):
        ingest_ray(store.path, [folder / "texts"], providers={"text": "minilm-l6-v2"}, progress=False)
    assert store.version == 1 and store.verify()["ok"] and not store.verify()["orphans"]


def test_commit_refuses_fragments_of_another_provider_written_meanwhile(home, tmp_path, monkeypatch):
    """The check at the commit point itself (no Ray needed): a table created with another provider after
    the workers embedded and wrote their fragments refuses the whole job."""
    import trigram_provider

    from aios_memory.distributed import Embed, Part, commit_parts
    from aios_memory.storage import Storage

    monkeypatch.setenv("AIOS_MEMORY_HOME", str(home))
    trigram_provider.register()
    location = tmp_path / "s"
    embed = Embed("text", store=None)
    rows = embed(__import__("pyarrow").table({"data": TEXTS}))
    fragment = Storage(location).write_fragment("text", rows.drop_columns(["_aios_index", "_aios_error"]))
    other = MemoryStore(location, providers={"text": trigram_provider.NAME})
    other.add("another writer got there first")
    with pytest.raises(ProviderMismatchError, match="minilm-l6-v2"):
        commit_parts(location, [Part("text", "minilm-l6-v2", None, (fragment,))])
    assert other.version == 1 and other.verify()["orphans"]  # the fragment: an orphan nobody reads


def test_embed_and_sink_in_process(home, folder, tmp_path, monkeypatch):
    """No cluster: an Embed call on paths and bytes (numpy batch), its failed inputs as rows the sink drops
    and reports, and the sink's write + on_write_complete committing one version."""
    import pyarrow as pa

    from aios_memory.distributed import Embed, MemoryDatasink

    monkeypatch.setenv("AIOS_MEMORY_HOME", str(home))
    photo = sorted((folder / "images").iterdir())[0]
    batch = {
        "path": np.array([str(photo), None, None], dtype=object),
        "data": np.array([None, photo.read_bytes(), b"GIF89a but not a picture"], dtype=object),
        "source": np.array([None, "https://example.com/cat.png", "mem://bad"], dtype=object),
        "index": np.array([7, 8, 9]),
    }
    out = Embed("image", namespace="pics")(batch)
    assert out.column("_aios_index").to_pylist() == [7, 8, 9]
    assert [e is None for e in out.column("_aios_error").to_pylist()] == [True, True, False]
    assert out.column("source").to_pylist()[:2] == [photo.resolve().as_uri(), "https://example.com/cat.png"]
    a, b = out.column("embedding").to_pylist()[:2]
    assert a == b and out.column("media").to_pylist()[0] == photo.read_bytes()

    store = MemoryStore(tmp_path / "s")
    sink = MemoryDatasink(store.path, modality="image", namespace="pics")
    written = sink.write([out], None)
    assert [(i, s) for i, s, _ in written.errors] == [(9, "mem://bad")] and written.rows == 2
    assert store.version == 0  # written, not committed
    sink.on_write_complete([written])
    assert sink.committed is not None and store.version == 1 and len(store.search(photo, k=5)) == 2
    with pytest.raises(InvalidInputError, match="namespace"):
        sink.write([out.set_column(1, "namespace", pa.array(["other"] * 3))], None)


def test_a_lost_worker_node_commits_nothing_and_a_rerun_succeeds(cluster, tmp_path):
    """Actors that may not restart (max_restarts=0): the worker node removed while its actor embeds fails
    the job; the fragments its write tasks already wrote are orphans no reader sees; a re-run commits once."""
    from aios_memory.distributed import ingest_ray

    many = texts_folder(tmp_path)
    store = MemoryStore(tmp_path / "s")
    store.add("before the job")
    data, hold = store.path / "data" / "text", tmp_path / "hold"
    # no retries of a write task lost with its node: the job fails as a whole
    thread, sink, failure = held_job(store, many, hold, max_restarts=0, write_args={"max_retries": 0})
    try:
        wait_for(lambda: any((tmp_path / "returned").iterdir()), "a write task of the job returning")
        assert len(list(data.glob("*.parquet"))) >= 2  # written, not committed
        cluster.remove_node(next(iter(cluster.worker_nodes)))  # its actor is inside a call
    finally:
        hold.unlink()
        thread.join(timeout=180)
        worker_node_back(cluster)
    settled(data)  # write tasks the failed job cancelled without waiting for them
    assert not thread.is_alive() and failure, "the job should have failed with its node"
    assert sink.error is not None and sink.committed is None and sink.result is None
    assert store.version == 1 and store.sql("SELECT content FROM text_memories").num_rows == 1
    report = store.verify()
    assert report["ok"], report["problems"]
    orphans = {Path(o).name.split(".")[0] for o in report["orphans"]}
    assert orphans and store.cleanup(older_than=0)["files_removed"] == len(orphans)

    again = ingest_ray(store.path, [many], actors=2, progress=False)
    assert (again["version"], again["rows"], store.version) == (2, 24, 2)
    contents = sorted(store.sql("SELECT content FROM text_memories").column("content").to_pylist())
    assert contents == sorted(["before the job", *(f"memory number {i} about a slow job" for i in range(24))])
    assert store.verify()["ok"] and not store.verify()["orphans"]


def test_when_ray_recovers_from_a_lost_node_every_file_is_committed_once(cluster, tmp_path):
    """Ray's default fault tolerance (actors restarted, tasks retried): the job completes, and a call that
    ran twice is committed once (the manifest names only the fragments of the attempts Ray returned)."""
    many = texts_folder(tmp_path)
    store = MemoryStore(tmp_path / "s")
    hold = tmp_path / "hold"
    thread, sink, failure = held_job(store, many, hold)
    try:
        wait_for(lambda: len(list((store.path / "data" / "text").glob("*.parquet"))) >= 1, "a fragment")
        cluster.remove_node(next(iter(cluster.worker_nodes)))  # its actor is inside a call
        worker_node_back(cluster)  # room for the restarted actor
    finally:
        hold.unlink()
        thread.join(timeout=180)
        worker_node_back(cluster)
    assert not thread.is_alive() and not failure, failure
    assert sink.committed is not None and sink.committed.version == 1  # (2: the merge of its small fragments)
    contents = store.sql("SELECT content FROM text_memories").column("content").to_pylist()
    assert sorted(contents) == sorted(f"memory number {i} about a slow job" for i in range(24))
    assert store.verify()["ok"]

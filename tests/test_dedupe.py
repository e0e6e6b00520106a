"""Exact duplicates are stored once by default (aios_memory.dedupe): same content, modality and namespace
returns the stored memory's id; a caller stores a repeat on purpose with ``dedupe=False``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import trigram_provider
from conftest import png_bytes, run_cli

from aios_memory import EmbeddingProvider, MemoryStore, hookimpl
from aios_memory.storage.sidecars import DIGEST_SUFFIX, content_digest, fragment_digests


class CountingProvider(trigram_provider.TrigramProvider):
    """The trigram provider, counting the items it embeds (to see that a repeat skips the model)."""

    name = "trigram-counting"
    embedded = 0

    def _embed(self, items: list[str]) -> np.ndarray:
        type(self).embedded += len(items)
        return super()._embed(items)


class _Plugin:
    @hookimpl
    def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
        register(CountingProvider())


@pytest.fixture()
def plugins() -> Iterator[Callable[[object, str], None]]:
    """Register test plugins for one test only: another module's default providers stay as they were."""
    from aios_memory.plugins import register_plugin, unregister_plugin

    mine: list[object] = []

    def use(plugin: object, name: str) -> None:
        register_plugin(plugin, name=name)
        mine.append(plugin)

    yield use
    for plugin in mine:
        unregister_plugin(plugin)


@pytest.fixture()
def counted(tmp_path: Path, plugins: Callable[[object, str], None]) -> MemoryStore:
    plugins(_Plugin(), "counting-test-plugin")
    CountingProvider.embedded = 0
    return MemoryStore(tmp_path / "s", providers={"text": CountingProvider.name})


def memories(store: MemoryStore) -> int:
    return store.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py()


def test_a_repeat_returns_the_stored_id_commits_nothing_and_skips_the_model(counted):
    first = counted.add("The gate code is 4471.", metadata={"seen": 1})
    version, embedded = counted.version, CountingProvider.embedded
    again = counted.add("The gate code is 4471.", metadata={"seen": 2}, source="elsewhere")
    assert again == first
    assert counted.version == version  # nothing committed
    assert CountingProvider.embedded == embedded  # and nothing embedded
    assert counted.get(first).metadata == {"seen": 1}  # the stored memory is left as it was
    # one character differs: another memory
    assert counted.add("The gate code is 4471!") != first
    assert memories(counted) == 2


def test_repeats_inside_one_call_are_stored_once(counted):
    ids = counted.add_many(["alpha", "beta", "alpha", "gamma", "beta"])
    assert ids[0] == ids[2] and ids[1] == ids[4] and len(set(ids)) == 3
    assert CountingProvider.embedded == 3
    assert memories(counted) == 3
    # a later call mixing stored and new items: ids in input order, one commit, new items only embedded
    version = counted.version
    more = counted.add_many(["gamma", "delta", "alpha"])
    assert more[0] == ids[3] and more[2] == ids[0] and more[1] not in ids
    assert counted.version == version + 1 and CountingProvider.embedded == 4


def test_namespaces_and_modalities_keep_their_own_copies(counted):
    a = counted.add("shared fact", namespace="alice")
    b = counted.add("shared fact", namespace="bob")
    assert a != b
    assert counted.add("shared fact", namespace="alice") == a


def test_dedupe_false_stores_a_repeat_on_purpose_and_the_default_then_finds_the_first(counted):
    first = counted.add("a repeat on purpose")
    second = counted.add("a repeat on purpose", dedupe=False)
    assert second != first and memories(counted) == 2
    assert counted.add("a repeat on purpose") == first
    # the store-wide setting
    off = MemoryStore(counted.path, providers={"text": CountingProvider.name}, dedupe=False)
    assert off.add("a repeat on purpose") not in (first, second)
    assert memories(counted) == 3


def test_after_a_delete_or_an_update_the_content_is_new_again(counted):
    first = counted.add("to be forgotten")
    counted.delete([first])
    again = counted.add("to be forgotten")
    assert again != first
    counted.update(again, "changed words")
    assert counted.add("to be forgotten") != again  # the stored copy now holds other words
    assert counted.add("changed words") == again


def test_near_duplicate_merging_stays_opt_in(counted):
    first = counted.add("The user's favourite colour is green.")
    assert counted.add("The user's favourite colour is green!") != first  # default: exact only
    assert counted.add("The user's favourite colour is green?", dedupe=0.9) in counted.add_many(
        ["The user's favourite colour is green.", "The user's favourite colour is green!"]
    )


def test_digests_come_from_the_sidecar_or_the_parquet_columns_alike(counted):
    counted.add_many(["one", "two", "three"])
    frag = counted._manifest().tables["text"].fragments[0]
    assert DIGEST_SUFFIX in frag.sidecars
    from_sidecar = fragment_digests(counted._storage, frag).copy()
    assert from_sidecar[1].tobytes() == content_digest("two", None)
    # a fragment written before digests existed: computed from its Parquet columns, same values
    old = dataclasses.replace(frag, sidecars=tuple(s for s in frag.sidecars if s != DIGEST_SUFFIX))
    assert np.array_equal(fragment_digests(counted._storage, old), from_sidecar)


def test_a_damaged_digest_sidecar_is_not_trusted(counted, tmp_path):
    first = counted.add("kept safe")
    frag = counted._manifest().tables["text"].fragments[0]
    side = Path(counted.path) / frag.sidecar_path(DIGEST_SUFFIX)
    side.chmod(0o644)
    side.write_bytes(bytes(16))  # same size, wrong digest: the sha256 check catches it
    fresh = MemoryStore(counted.path, providers={"text": CountingProvider.name})  # a fresh process's view
    from aios_memory.storage.cache import CACHE

    CACHE.clear()
    assert fresh.add("kept safe") == first  # found through the Parquet column, the source of truth
    assert not fresh.verify()["ok"]


def test_images_are_the_same_memory_only_when_their_bytes_are(tmp_path, plugins):
    """Image digests are taken over the stored bytes (no CLIP weights needed to check: a provider of
    our own embeds image bytes by their length)."""

    class Bytes(EmbeddingProvider):
        name, modality, dim = "bytes-len", "image", 4

        def _embed(self, items):  # type: ignore[no-untyped-def]
            return np.array([[len(bytes(x)), 1, 2, 3] for x in items], np.float32)

    class Plugin:
        @hookimpl
        def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
            register(Bytes())

    plugins(Plugin(), "bytes-len-plugin")
    store = MemoryStore(tmp_path / "img", providers={"image": "bytes-len"})
    cat = png_bytes()
    a = store.add(cat)
    assert store.add(cat) == a
    assert store.add(png_bytes(size=64)) != a  # the same photo, other bytes


def test_concurrent_writers_store_one_copy(tmp_path):
    """Four processes add the same texts at once: the check inside the commit (under the writers' lock)
    leaves one memory per text, and every process gets its id."""
    path = tmp_path / "race"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import trigram_provider
        trigram_provider.register()
        from aios_memory import MemoryStore
        s = MemoryStore(sys.argv[1], providers={{"text": trigram_provider.NAME}})
        for i in range(15):
            print(s.add_many([f"fact {{i}}", f"fact {{i + 1}}"])[0])
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(out == outs[0] for out in outs)  # the same id for the same text, whoever stored it
    store = MemoryStore(path, providers={"text": trigram_provider.NAME})
    rows = store.sql("SELECT content, count(*) AS n FROM text_memories GROUP BY content").to_pylist()
    assert len(rows) == 16 and all(r["n"] == 1 for r in rows)


def test_importing_a_folder_twice_stores_it_once(model_home, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for i, text in enumerate(["Buy milk", "Call the dentist", "Buy milk"]):
        (folder / f"{i}.txt").write_text(text)
    store = tmp_path / "st"
    first = run_cli("--store", str(store), "import", str(folder)).stdout
    assert "imported 3 files as 2 memories" in first  # the repeat inside the folder is one memory
    version = MemoryStore(store).version
    second = run_cli("--store", str(store), "import", str(folder)).stdout
    assert "imported 0 files as 0 memories" in second and "(3 files held already)" in second, second
    assert MemoryStore(store).version == version  # nothing committed the second time
    counted = MemoryStore(store).sql("SELECT content, count(*) AS n FROM text_memories GROUP BY content")
    assert sorted(counted.to_pylist(), key=lambda r: r["content"]) == [
        {"content": "Buy milk", "n": 1},
        {"content": "Call the dentist", "n": 1},
    ]


def test_ingest_skips_the_model_for_what_the_namespace_holds(counted):
    from aios_memory.ingest import ingest

    first = ingest(counted, ["red", "green", "blue"], progress=False)
    embedded = CountingProvider.embedded
    again = ingest(counted, ["green", "cyan", "red"], progress=False, namespace="default")
    assert again.ids[0] == first.ids[1] and again.ids[2] == first.ids[0] and again.existing == 2
    assert CountingProvider.embedded == embedded + 1  # only "cyan" went through the model
    other = ingest(counted, ["green"], progress=False, namespace="elsewhere")
    assert other.existing == 0 and other.ids[0] != first.ids[1]


def test_copies_stored_on_purpose_in_one_batch_give_one_id(counted):
    counted.add_many(["dup", "dup"], dedupe=False)  # two memories, one timestamp
    assert len(counted.add_many(["dup"])) == 1
    ids = counted.add_many(["x", "dup", "y"])
    assert len(ids) == 3 and counted.get(ids[2]).content == "y"


def test_a_pinned_handle_or_a_delete_meanwhile_never_returns_a_deleted_id(counted, plugins):
    gone = counted.add("remember this")
    pinned = counted.version
    counted.delete([gone])
    counted.checkout(pinned)  # reads see the memory; writes go to the newest version, which lacks it
    again = counted.add("remember this")
    counted.checkout(None)
    assert again != gone and counted.get(again).content == "remember this"

    race = Path(counted.path).parent / "race"

    class Deleting(CountingProvider):
        """Deletes the stored copy while the rest of the batch embeds (another agent, meanwhile)."""

        name = "trigram-deleting"
        victim: str | None = None

        def _embed(self, items: list[str]) -> np.ndarray:
            if type(self).victim is not None:
                MemoryStore(race).delete([type(self).victim])
                type(self).victim = None
            return super()._embed(items)

    class P:
        @hookimpl
        def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
            register(Deleting())

    plugins(P(), "deleting-test-plugin")
    store = MemoryStore(race, providers={"text": Deleting.name})
    old = store.add("old fact")
    Deleting.victim = old
    first, second = store.add_many(["old fact", "new fact"])
    assert first != old  # found before embedding, deleted before the commit: stored again
    assert store.get(first).content == "old fact" and store.get(second).content == "new fact"


def test_a_recordings_windows_come_back_in_window_order(tmp_path, plugins):
    """Audio split into windows (a provider of our own: three windows per clip, no Whisper needed)."""
    from conftest import wav_bytes

    class Windows(EmbeddingProvider):
        name, modality, dim = "three-windows", "audio", 4

        def expand(self, item):  # type: ignore[no-untyped-def]
            return [(item, {"start_s": 30.0 * k, "end_s": 30.0 * (k + 1)}) for k in range(3)]

        def _embed(self, items):  # type: ignore[no-untyped-def]
            return np.tile(np.arange(1, 5, dtype=np.float32), (len(items), 1))

    class P:
        @hookimpl
        def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
            register(Windows())

    plugins(P(), "three-windows-plugin")
    trigram_provider.register()
    store = MemoryStore(tmp_path / "a", providers={"audio": Windows.name, "text": trigram_provider.NAME})
    clip = wav_bytes(0.5)
    wins = store.add_many([clip])
    assert len(wins) == 3
    store.update(wins[0], metadata={"seen": True})  # the updated row moves within its fragment
    assert store.add_many([clip]) == wins
    assert store.add_many(["a note", clip], modality=None)[1:] == wins


def test_a_fragment_from_before_digests_gets_them_with_the_next_commit(counted):
    counted.add_many(["one", "two"])
    frag = counted._manifest().tables["text"].fragments[0]
    (Path(counted.path) / frag.sidecar_path(DIGEST_SUFFIX)).unlink()

    def as_before(m):  # the manifest a writer from before digests made: no digest sidecar
        old = dataclasses.replace(
            frag,
            sidecars=tuple(s for s in frag.sidecars if s != DIGEST_SUFFIX),
            checksums=tuple(c for c in frag.checksums if c[0] != DIGEST_SUFFIX),
            sidecar_nbytes=frag.sidecar_nbytes - 32,
        )
        m.tables["text"].fragments[0] = old
        return m

    counted._storage.commit("as before digests", as_before)
    assert counted.verify()["ok"]
    assert (
        counted.add("two")
        == counted.sql("SELECT id FROM text_memories WHERE content = 'two'")["id"][0].as_py()
    )
    counted.add("three")  # a commit: the old fragment's digests are written and named with it
    upgraded = counted._manifest().tables["text"].fragments[0]
    assert upgraded.path == frag.path and DIGEST_SUFFIX in upgraded.sidecars
    assert counted.verify()["ok"]
    assert np.array_equal(
        fragment_digests(counted._storage, upgraded)[1], np.frombuffer(content_digest("two", None), np.uint8)
    )

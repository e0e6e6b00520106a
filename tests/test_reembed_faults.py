"""Re-embedding under faults an independent review found: racing writers, damaged staging records,
cleanup between runs, emptied tables, a model replaced under a running process (aios_memory/reembed.py,
aios_memory/provider.py ConvertedModelProvider.fingerprint)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trigram_provider
from test_reembed import NEW, OLD, on_one_model, rows_of, seeded

from aios_memory import MemoryStore
from aios_memory.errors import ProviderError, ProviderMismatchError
from aios_memory.reembed import record_name


@pytest.fixture(autouse=True)
def _third_party() -> None:
    trigram_provider.register()


def slowed(cls: type, pause: float, started: threading.Event | None = None, fail_after: int | None = None):  # type: ignore[no-untyped-def]
    """Patch ``cls._embed`` (a test provider) to pause, signal, or fail after some calls; returns undo."""
    orig, calls = cls._embed, [0]

    def embed(self, items):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if started is not None:
            started.set()
        if fail_after is not None and calls[0] > fail_after:
            raise ProviderError("the model failed midway")
        time.sleep(pause)
        return orig(self, items)

    cls._embed = embed
    return lambda: setattr(cls, "_embed", orig)


def test_an_update_racing_a_reembed_is_refused_not_mixed_in(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = seeded(path, n=60, fragments=1)
    victim = sorted(rows_of(s))[3]
    before = rows_of(s)[victim]["content"]
    started, errors = threading.Event(), []
    undo = slowed(trigram_provider.TrigramProvider, 1.0, started)  # update embeds with the old model...
    try:
        t = threading.Thread(
            target=lambda: _catch(errors, lambda: s.update(victim, "the cat is called Miso"))
        )
        t.start()
        started.wait(10)
        undo()
        MemoryStore(path).reembed("text", NEW, progress=False)  # ...while the table moves to the new one
        t.join(30)
    finally:
        undo()
    assert len(errors) == 1 and isinstance(errors[0], ProviderMismatchError)
    assert "re-embedded" in str(errors[0])
    after = rows_of(MemoryStore(path))
    assert after[victim]["content"] == before
    assert on_one_model(path, set(after)) == NEW


def _catch(errors: list, fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        errors.append(exc)


def staged_run(path: Path, fail_after: int) -> None:
    """A reembed to NEW that fails midway (the model raises), leaving staged chunks and the record."""
    import aios_memory.reembed as r

    keep, r.STAGE_ROWS = r.STAGE_ROWS, 20
    undo = slowed(trigram_provider.BigramProvider, 0.0, fail_after=fail_after)
    try:
        with pytest.raises(ProviderError, match="midway"):
            MemoryStore(path).reembed("text", NEW, batch_size=10, progress=False)
    finally:
        undo()
        r.STAGE_ROWS = keep


def finish_and_compare(path: Path, ref: Path) -> dict:
    import aios_memory.reembed as r

    keep, r.STAGE_ROWS = r.STAGE_ROWS, 20
    try:
        out = MemoryStore(path).reembed("text", NEW, batch_size=10, progress=False)
        MemoryStore(ref).reembed("text", NEW, batch_size=10, progress=False)
    finally:
        r.STAGE_ROWS = keep
    got, want = rows_of(MemoryStore(path)), rows_of(MemoryStore(ref))
    assert got == want
    assert MemoryStore(path).verify()["ok"]
    return out


def test_a_failed_run_resumes_and_cleanup_between_runs_costs_only_time(tmp_path: Path) -> None:
    path, ref = tmp_path / "s", tmp_path / "ref"
    seeded(path, n=200, fragments=2)
    shutil.copytree(path, ref)
    staged_run(path, fail_after=9)
    assert on_one_model(path, set(rows_of(MemoryStore(path)))) == OLD  # untouched by the failure
    assert finish_and_compare(path, ref)["resumed_rows"] > 0
    path2, ref2 = tmp_path / "s2", tmp_path / "ref2"
    seeded(path2, n=200, fragments=2)
    shutil.copytree(path2, ref2)
    staged_run(path2, fail_after=9)
    MemoryStore(path2).cleanup(older_than=0)  # takes the staged (unreferenced) files
    assert finish_and_compare(path2, ref2)["resumed_rows"] == 0


@pytest.mark.parametrize(
    "damage",
    ["garbage", "no_checksums", "complete_flag", "other_source", "fields", "outside"],
)
def test_a_damaged_staging_record_is_never_trusted(tmp_path: Path, damage: str) -> None:
    """Whatever the record says, the switch commits exactly what an uninterrupted run would."""
    path, ref = tmp_path / "s", tmp_path / "ref"
    seeded(path, n=200, fragments=2)
    shutil.copytree(path, ref)
    staged_run(path, fail_after=12)
    rec_path = path / record_name("text")
    rec = json.loads(rec_path.read_text())
    entries = list(rec["done"].values())
    first = entries[0]
    if damage == "garbage":
        rec["done"] = {"x": [1, 2]}
    elif damage == "no_checksums":
        for c in first["chunks"]:
            c["checksums"] = []
    elif damage == "complete_flag":
        for e in entries:
            e["complete"] = True
            e["chunks"] = e["chunks"][:1]
    elif damage == "other_source":  # the chunks of one source recorded for the other
        if len(entries) > 1 and entries[1]["chunks"]:
            entries[0]["chunks"], entries[1]["chunks"] = entries[1]["chunks"], entries[0]["chunks"]
        else:
            first["chunks"] = first["chunks"][1:] + first["chunks"][:1]
    elif damage == "fields":
        first["chunks"][0]["rows"] = "20"
    elif damage == "outside":
        first["chunks"][0]["path"] = "../../../etc/passwd"
    rec_path.write_text(json.dumps(rec))
    finish_and_compare(path, ref)


def test_an_emptied_table_switches_model(tmp_path: Path) -> None:
    s = seeded(tmp_path / "s", n=10, fragments=1)
    s.delete(list(rows_of(s)))
    out = s.reembed("text", NEW, progress=False)
    assert out["rows"] == 0
    assert s._storage.read_manifest().tables["text"].provider == NEW
    s.add("now on the new model")
    assert rows_of(s) and {r["provider"] for r in rows_of(s).values()} == {NEW}


def test_a_read_only_scope_with_admin_rights_cannot_reembed(tmp_path: Path) -> None:
    from aios_memory.errors import AccessDeniedError
    from aios_memory.scope import Scope

    seeded(tmp_path / "s", n=10, fragments=1)
    s = MemoryStore(tmp_path / "s").scoped(Scope(write=False, admin=True))
    with pytest.raises(AccessDeniedError):
        s.reembed("text", NEW)


def test_a_loaded_model_whose_file_was_replaced_is_loaded_again(model_home: Path, tmp_path: Path) -> None:
    """A long-lived process holds MiniLM A; another installs B in its place. The process's fingerprint
    names B from then on and its next vectors are B's (it let A go), never A's vectors labelled B."""
    from aios_memory_text.provider import MiniLMProvider, packaged_source
    from test_reembed import modified_minilm

    from aios_memory.weights_format import read_meta

    d = tmp_path / "models" / "text"
    d.mkdir(parents=True)
    shutil.copy2(MiniLMProvider().weights_path, d / "weights.parquet")
    shutil.copy2(MiniLMProvider().weights_path.parent / "tokenizer.json", d / "tokenizer.json")
    held = MiniLMProvider(directory=d)
    a_vec = held.embed_batch(["a dog chasing cats"])[0]
    a_id = held.fingerprint()["weights"]
    other = tmp_path / "other"
    MiniLMProvider(directory=other).install(modified_minilm(packaged_source(), tmp_path / "ckpt"))
    assert read_meta(other / "weights.parquet")  # a real weight file
    shutil.copy2(other / "weights.parquet", d / "weights.tmp")
    shutil.copy2(other / "tokenizer.json", d / "tokenizer.json")
    os.replace(d / "weights.tmp", d / "weights.parquet")  # what `models install --force` does
    b_id = held.fingerprint()["weights"]
    assert b_id != a_id and not held.loaded  # let go of A
    b_vec = held.embed_batch(["a dog chasing cats"])[0]
    want = MiniLMProvider(directory=other).embed_batch(["a dog chasing cats"])[0]
    np.testing.assert_allclose(b_vec, want, atol=1e-6)
    assert float(np.dot(a_vec, b_vec)) < 0.999

"""Re-embedding as a migration (aios_memory/reembed.py): one commit, nothing lost, resumable after kill -9."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trigram_provider
from conftest import run_cli

from aios_memory import MemoryStore
from aios_memory.errors import (
    AccessDeniedError,
    InvalidInputError,
    ProviderMismatchError,
    ProviderNotFoundError,
)
from aios_memory.plugins import get_provider
from aios_memory.reembed import record_name

TESTS = Path(__file__).resolve().parent
OLD, NEW = trigram_provider.NAME, trigram_provider.BIGRAM


@pytest.fixture(autouse=True)
def _third_party() -> None:
    trigram_provider.register()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "cat dog train station gate code orange kite river bank late early red blue".split()
    return [f"{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for i in range(n)]


def seeded(path: Path, n: int = 300, fragments: int = 3) -> MemoryStore:
    s = MemoryStore(path, providers={"text": OLD})
    rows = texts(n)
    step = n // fragments
    for k in range(fragments):
        part = rows[k * step : (k + 1) * step if k < fragments - 1 else n]
        s.add_many(part, metadata=[{"k": k, "i": i} for i in range(len(part))], namespace=f"ns{k % 2}")
    return s


def rows_of(s: MemoryStore) -> dict[str, dict]:
    t = s.sql(
        "SELECT id, namespace, content, metadata, created_at, updated_at, provider, embedding FROM text_memories"
    )
    return {r["id"]: r for r in t.to_pylist()}


def on_one_model(path: Path, ids: set[str]) -> str:
    """Open the store as a new reader: every row on the model its table records, vectors that model's."""
    s = MemoryStore(path)
    table = s._storage.read_manifest().tables["text"]
    rows = rows_of(s)
    assert set(rows) == ids  # nothing lost, nothing doubled
    assert {r["provider"] for r in rows.values()} == {table.provider}
    want = get_provider(table.provider).embed_batch([r["content"] for r in rows.values()])
    got = np.array([r["embedding"] for r in rows.values()], np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    return table.provider


def test_switches_every_row_in_one_commit_and_keeps_ids_metadata_history(tmp_path: Path) -> None:
    s = seeded(tmp_path / "s")
    some = sorted(rows_of(s))[:2]
    s.update(some[0], metadata={"edited": True})
    s.delete(some[1])
    before, v0 = rows_of(s), s.version
    out = s.reembed("text", NEW, progress=False)
    assert out["rows"] == len(before) and out["version"] == v0 + 1 and out["resumed_rows"] == 0
    assert OLD in out["from"] and NEW in out["to"]
    after = rows_of(s)
    assert set(after) == set(before)
    for id_, r in after.items():
        b = before[id_]
        assert (r["namespace"], r["content"], r["metadata"], r["created_at"], r["updated_at"]) == (
            b["namespace"], b["content"], b["metadata"], b["created_at"], b["updated_at"]
        )  # fmt: skip
        assert r["provider"] == NEW and len(r["embedding"]) == 96
    assert [h["operation"] for h in s.history(some[0])][-1] == "update"  # the change log is kept
    assert s.versions(limit=1)[0]["operation"] == "reembed text"
    assert MemoryStore(tmp_path / "s", as_of=v0).provider_for("text").name == OLD  # the past stays whole
    hit = s.search(before[some[0]]["content"], k=1)[0]
    assert hit.id == some[0] and hit.score == pytest.approx(1.0, abs=1e-5)
    assert not s._storage.backend.exists(record_name("text"))
    again = s.reembed("text", NEW, progress=False)  # already there: nothing to do, no commit
    assert again["rows"] == 0 and s.version == v0 + 1


def test_bad_calls_are_typed_errors_with_nothing_changed(tmp_path: Path) -> None:
    s = seeded(tmp_path / "s", n=30, fragments=1)
    v = s.version
    with pytest.raises(ProviderNotFoundError):
        s.reembed("text", "no-such-provider")
    with pytest.raises(InvalidInputError, match="no image memories"):
        s.reembed("image")
    with pytest.raises(InvalidInputError):
        s.reembed("text", NEW, batch_size=0)
    with pytest.raises(InvalidInputError, match="text_provider"):
        s.reembed("text", NEW, text_provider=OLD)
    with pytest.raises(AccessDeniedError):
        MemoryStore(tmp_path / "s", as_of=v).reembed("text", NEW)
    assert s.version == v and {r["provider"] for r in rows_of(s).values()} == {OLD}


def kill_and_resume(path: Path, prelude: str, old: str, new: str, window: tuple[float, float], check) -> None:  # type: ignore[no-untyped-def]
    """>= 20 real kills of a process re-embedding ``path`` to ``new``: after each, a fresh reader finds every
    row on exactly one model (``check``); the run that finishes equals an uninterrupted one on a copy."""
    ref = path.parent / "ref"
    shutil.copytree(path, ref)
    ids = set(rows_of(MemoryStore(path)))
    child = (
        f"import sys, time; sys.path.insert(0, {str(TESTS)!r})\n"
        "import aios_memory.reembed as r; r.STAGE_ROWS = 40\n"
        f"{prelude}"
        "from aios_memory import MemoryStore\n"
        f"out = MemoryStore({str(path)!r}).reembed('text', {new!r}, batch_size=16, progress=False)\n"
        "print(out['resumed_rows'])\n"
    )
    rng, kills, staged, finished, last = random.Random(7), 0, [], None, old
    while finished is None:
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        if kills < 20:
            time.sleep(rng.uniform(*window))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                last = check(path, ids)  # all old (killed before its commit) or all new (after it)
                assert last in (old, new)
                rec = MemoryStore(path)._storage.backend
                if rec.exists(record_name("text")):
                    done = json.loads(rec.read_bytes(record_name("text")))["done"]
                    staged.append(sum(c["rows"] for e in done.values() for c in e["chunks"]))
                continue
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0
        finished = int(out.strip().splitlines()[-1])
    assert kills >= 20
    assert max(staged, default=0) > 0  # chunks were staged before kills
    if last == old:
        assert finished > 0  # the finishing run took over what killed runs staged, not redone
    assert check(path, ids) == new
    import aios_memory.reembed as r

    r.STAGE_ROWS, keep = 40, r.STAGE_ROWS  # the same chunks, so the same batches as the child's
    try:
        MemoryStore(ref).reembed("text", new, batch_size=16, progress=False)
    finally:
        r.STAGE_ROWS = keep
    got, want = rows_of(MemoryStore(path)), rows_of(MemoryStore(ref))
    assert got.keys() == want.keys()
    for id_ in got:
        assert got[id_] == want[id_]


SLOW_BIGRAM = (
    "import trigram_provider; trigram_provider.register()\n"
    "orig = trigram_provider.BigramProvider._embed\n"
    "def slow(self, items):\n    time.sleep(0.02)\n    return orig(self, items)\n"
    "trigram_provider.BigramProvider._embed = slow\n"
)


def test_kill_9_third_party_to_another(tmp_path: Path) -> None:
    seeded(tmp_path / "s", n=4000, fragments=4)
    kill_and_resume(tmp_path / "s", SLOW_BIGRAM, OLD, NEW, (0.2, 1.2), on_one_model)


def on_one_minilm(path: Path, ids: set[str]) -> str:
    """Like ``on_one_model`` for MiniLM fp32/bf16, on a sample of rows."""
    s = MemoryStore(path)
    table = s._storage.read_manifest().tables["text"]
    rows = rows_of(s)
    assert set(rows) == ids and {r["provider"] for r in rows.values()} == {table.provider}
    sample = sorted(rows)[::10]
    want = get_provider(table.provider).embed_batch([rows[i]["content"] for i in sample])
    got = np.array([rows[i]["embedding"] for i in sample], np.float32)
    # bf16 vectors move with the batch a text was padded in (1e-5): the exact check is the final equality
    bar = 0.9999 if table.provider.endswith("@bf16") else 0.99999
    assert float(np.min(np.sum(got * want, axis=1))) >= bar
    return table.provider


def test_kill_9_minilm_fp32_to_bf16(store: MemoryStore) -> None:
    store.add_many(texts(2000, seed=5))
    slow = (  # a pause per batch (the vectors are the model's own): kills land while it embeds
        "import aios_memory_text.provider as p\n"
        "orig = p.MiniLMProvider._embed\n"
        "def slow(self, items):\n    time.sleep(0.3)\n    return orig(self, items)\n"
        "p.MiniLMProvider._embed = slow\n"
    )
    kill_and_resume(store.path, slow, "minilm-l6-v2", "minilm-l6-v2@bf16", (1.0, 5.0), on_one_minilm)


def test_rows_added_while_it_runs_are_embedded_before_the_switch(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = seeded(path, n=400, fragments=2)
    orig = trigram_provider.BigramProvider._embed
    started = threading.Event()

    def slow(self, items):  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(0.01)
        return orig(self, items)

    trigram_provider.BigramProvider._embed = slow  # type: ignore[method-assign]
    try:
        result: dict = {}
        t = threading.Thread(
            target=lambda: result.update(s.reembed("text", NEW, batch_size=8, progress=False))
        )
        t.start()
        started.wait(10)
        writer = MemoryStore(path, providers={"text": OLD})
        added = writer.add_many([f"added meanwhile {i}" for i in range(25)])
        t.join(120)
    finally:
        trigram_provider.BigramProvider._embed = orig  # type: ignore[method-assign]
    assert result["rows"] == 425
    ids = set(rows_of(s))
    assert set(added) <= ids
    assert on_one_model(path, ids) == NEW
    with pytest.raises(ProviderMismatchError):  # a writer still on the old model is refused, not mixed in
        writer.add("one more on the old model")


def test_minilm_fp32_to_bf16(store: MemoryStore, tmp_path: Path) -> None:
    """fp32 -> @bf16 with the real weights: the vectors equal adding the same texts to a bf16 store."""
    rows = texts(120, seed=3)
    store.add_many(rows)
    out = store.reembed("text", "minilm-l6-v2@bf16", progress=False)
    assert out["rows"] == 120 and "bf16" in out["to"] and "weights blake3:" in out["to"]
    ref = MemoryStore(tmp_path / "ref", providers={"text": "minilm-l6-v2@bf16"})
    ref.add_many(rows)
    got = {r["content"]: r["embedding"] for r in rows_of(store).values()}
    want = {r["content"]: r["embedding"] for r in rows_of(ref).values()}
    a = np.array([got[t] for t in rows], np.float32)
    b = np.array([want[t] for t in rows], np.float32)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.99999
    assert store.search(rows[5], k=1)[0].content == rows[5]


def modified_minilm(src: Path, dest: Path) -> Path:
    """A copy of the real MiniLM checkpoint with one layer's attention weights perturbed."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    rng = np.random.default_rng(0)
    for name in list(tensors):
        if ".attention.self." in name and name.endswith("weight"):
            t = tensors[name]
            tensors[name] = (t + rng.normal(0, 0.2, t.shape)).astype(t.dtype)
    save_file(tensors, str(dest / "model.safetensors"))
    return dest


@pytest.fixture(scope="module")
def modified_home(model_home: Path, minilm_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model home: the same Whisper, a modified MiniLM installed under the same provider name."""
    root = tmp_path_factory.mktemp("home2")
    env = {"AIOS_MEMORY_HOME": str(root / "home")}
    run_cli(
        "models", "install", "text", "--from", str(modified_minilm(minilm_source, root / "ckpt")), env=env
    )
    return root / "home"


def test_modified_checkpoint_under_the_same_name_is_refused_then_migrated(
    modified_home: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s"
    run_cli("--store", str(store), "add", "a dog chasing cats")
    run_cli("--store", str(store), "add", "the quarterly tax report")
    env = {"AIOS_MEMORY_HOME": str(modified_home)}
    for args in (["add", "another memory"], ["search", "dog"]):
        proc = run_cli("--store", str(store), *args, env=env, check=False)
        assert proc.returncode != 0
        assert "ProviderMismatchError" in proc.stderr and "weights" in proc.stderr
        assert "reembed text --provider minilm-l6-v2" in proc.stderr
    assert json.loads(run_cli("--store", str(store), "doctor").stdout)["ok"]  # with the original model
    report = json.loads(run_cli("--store", str(store), "doctor", env=env, check=False).stdout)
    assert not report["ok"] and "differs in weights" in report["problems"][0]
    moved = json.loads(run_cli("--store", str(store), "reembed", "text", env=env).stdout)
    assert moved["rows"] == 2 and moved["from"] != moved["to"]
    run_cli("--store", str(store), "add", "another memory", env=env)  # the table now is the new model's
    proc = run_cli("--store", str(store), "search", "dog", check=False)  # and the original is refused
    assert proc.returncode != 0 and "ProviderMismatchError" in proc.stderr


@pytest.mark.skipif(not Path("/usr/share/sounds/alsa/Front_Left.wav").exists(), reason="alsa-utils missing")
def test_audio_windows_and_transcripts_move_to_another_text_model(model_home: Path, tmp_path: Path) -> None:
    """Audio rows are embedded again from their stored recording, each window cut again at its start_s;
    transcripts are made anew and embedded with the chosen text model."""
    import io

    import librosa
    import soundfile

    get_provider("whisper-base").install()
    sr = 16000
    clip, clip_sr = soundfile.read("/usr/share/sounds/alsa/Front_Left.wav", dtype="float32")
    clip = librosa.resample(clip, orig_sr=clip_sr, target_sr=sr)
    samples = np.zeros(45 * sr, dtype=np.float32)
    for start_s in (5, 35):  # a voice in each of two windows
        samples[start_s * sr : start_s * sr + len(clip)] = clip
    buf = io.BytesIO()
    soundfile.write(buf, samples, sr, format="WAV")
    s = MemoryStore(tmp_path / "s")
    s.add_many([buf.getvalue(), Path("/usr/share/sounds/alsa/Front_Center.wav")])
    cols = "id, start_s, end_s, transcript, embedding, transcript_embedding, created_at, provider"
    before = {r["id"]: r for r in s.sql(f"SELECT {cols} FROM audio_memories").to_pylist()}
    assert len(before) == 3
    out = s.reembed("audio", text_provider="minilm-l6-v2@bf16", progress=False)
    assert out["rows"] == 3
    table = s._storage.read_manifest().tables["audio"]
    assert (table.provider, table.text_provider) == ("whisper-base", "minilm-l6-v2@bf16")
    after = {r["id"]: r for r in s.sql(f"SELECT {cols} FROM audio_memories").to_pylist()}
    assert after.keys() == before.keys()
    bf16 = get_provider("minilm-l6-v2@bf16")
    for id_, r in after.items():
        b = before[id_]
        assert (r["start_s"], r["end_s"], r["transcript"], r["created_at"]) == (
            b["start_s"], b["end_s"], b["transcript"], b["created_at"]
        )  # fmt: skip
        assert float(np.dot(r["embedding"], b["embedding"])) >= 0.99999  # the same window, cut again
        want = bf16.embed_batch([r["transcript"]])[0]
        assert float(np.dot(r["transcript_embedding"], want)) >= 0.9999
    assert s.search("front left", k=1, modality="audio")[0].extra["start_s"] in (0.0, 30.0)


@pytest.mark.skipif(not Path("/usr/share/sounds/alsa/Front_Left.wav").exists(), reason="alsa-utils missing")
def test_transcript_vectors_record_their_text_model_too(
    model_home: Path, modified_home: Path, tmp_path: Path
) -> None:
    """An audio table's transcripts are embedded by the text provider: other MiniLM weights under the same
    name are refused for them as well, and `reembed audio --text-provider` migrates them."""
    get_provider("whisper-base").install()
    whisper = get_provider("whisper-base").directory
    if not (modified_home / "models" / whisper.name).exists():
        shutil.copytree(whisper, modified_home / "models" / whisper.name)
    store = tmp_path / "s"
    run_cli("--store", str(store), "add", "--file", "/usr/share/sounds/alsa/Front_Left.wav")
    assert MemoryStore(store)._storage.read_manifest().tables["audio"].text_fingerprint["weights"]
    env = {"AIOS_MEMORY_HOME": str(modified_home)}
    proc = run_cli("--store", str(store), "search", "front left", "--modality", "audio", env=env, check=False)
    assert proc.returncode != 0 and "transcript vectors of audio memories" in proc.stderr
    assert "reembed audio --text-provider minilm-l6-v2" in proc.stderr
    moved = json.loads(
        run_cli("--store", str(store), "reembed", "audio", "--text-provider", "minilm-l6-v2", env=env).stdout
    )
    assert moved["rows"] == 1
    run_cli("--store", str(store), "search", "front left", "--modality", "audio", env=env)

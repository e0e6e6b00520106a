"""The ingestion pipeline: real files into a real store, bad files reported and skipped, ids in input order,
one atomic commit per ``commit_every`` items, SIGKILL mid-import, and embeddings equal to ``add_many``'s.
Also the providers' preprocess/forward split against their one-call embedding."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from aios_memory_converters.clip import convert_clip
from conftest import run_cli, wav_bytes
from test_clip_model import TINY, make_clip_folder, real_images

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError, UnsupportedMediaError
from aios_memory.ingest import ingest

TEXTS = [f"note number {i}: the {w} jumps over the fence" for i, w in enumerate("abcdefghijklmnopq")]


@pytest.fixture(scope="module")
def home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model home with the real MiniLM weights (copied from the session's) and a tiny seeded CLIP."""
    root = tmp_path_factory.mktemp("ingest_home")
    shutil.copytree(model_home / "models" / "text", root / "models" / "text")
    make_clip_folder(root / "hf", TINY, seed=5)
    convert_clip(root / "hf", root / "models" / "clip")
    return root


@pytest.fixture()
def env_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIOS_MEMORY_HOME", str(home))
    return home


def _image_files(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (name, data) in enumerate(sorted(real_images().items())):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        for k, size in enumerate((96, 160)):
            p = folder / f"{n:02d}_{k}_{name}.{'jpg' if k else 'png'}"
            img.resize((size, size + 17 * k)).save(p)
            paths.append(p)
    return paths


def test_text_files_ids_in_order_bad_files_reported(env_home, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i, text in enumerate(TEXTS):
        p = folder / f"{i:02d}.txt"
        p.write_text(text)
        paths.append(p)
    (folder / "bad.bin").write_bytes(b"\x00\xff\xfe\x80" * 50)  # neither media nor UTF-8
    (folder / "blank.txt").write_text("   \n")
    paths[5:5] = [folder / "bad.bin", folder / "blank.txt"]
    store = MemoryStore(tmp_path / "store")
    v0 = store.version
    res = ingest(
        store, paths, batch_size=3, commit_every=5, progress=False, metadata=lambda p: {"file": p.name}
    )
    assert [e.index for e in res.errors] == [5, 6]
    assert res.errors[0].source == (folder / "bad.bin").resolve().as_uri()
    assert "not an image, audio or UTF-8 text" in res.errors[0].message
    assert res.ids[5] is None and res.ids[6] is None
    assert res.added == len(TEXTS) and res.rows == len(TEXTS)
    assert res.commits >= 3 and store.version == v0 + res.commits  # one version per commit
    for p, ids in zip(paths, res.ids, strict=True):
        if ids is None:
            continue
        (id_,) = ids
        m = store.get(id_)
        assert m.content == p.read_text() and m.metadata == {"file": p.name}
        assert m.source == p.resolve().as_uri()
    hit = store.search(TEXTS[3], k=1)[0]
    assert hit.content == TEXTS[3]
    with pytest.raises(InvalidInputError, match="not an image, audio or UTF-8 text") as refused:
        ingest(MemoryStore(tmp_path / "strict"), paths, progress=False, strict=True)
    assert refused.type is InvalidInputError  # the file's own error, re-raised as it was


def _vectors(store: MemoryStore, ids: list[str]) -> np.ndarray:
    t = store.sql("SELECT id, embedding FROM image_memories").to_pydict()
    by_id = dict(zip(t["id"], t["embedding"], strict=True))
    return np.array([by_id[i] for i in ids], dtype=np.float32)


def test_images_equal_add_many_and_corrupt_image_skipped(env_home, tmp_path):
    paths = _image_files(tmp_path / "imgs")
    corrupt = tmp_path / "imgs" / "corrupt.png"
    corrupt.write_bytes(paths[0].read_bytes()[:200])  # a PNG header, then nothing: decodes nowhere
    inputs = paths[:3] + [corrupt] + paths[3:]
    a = MemoryStore(tmp_path / "a")
    res = ingest(a, inputs, batch_size=32, workers=2, queue_depth=1, progress=False)
    assert [e.index for e in res.errors] == [3] and res.errors[0].error == UnsupportedMediaError.__name__
    b = MemoryStore(tmp_path / "b")
    ids_b = b.add_many(paths)
    got = _vectors(a, [ids[0] for ids in res.ids if ids is not None])
    want = _vectors(b, ids_b)
    # the same images in the same batches of 32: bit-identical vectors
    assert got.shape == (len(paths), 512) and np.array_equal(got, want)
    # other batches (4 images, a commit every 8): the same up to float rounding of other GEMM shapes
    c = MemoryStore(tmp_path / "c")
    res = ingest(c, paths, batch_size=4, commit_every=8, progress=False)
    assert res.commits == 3 and not res.errors
    other = _vectors(c, [ids[0] for ids in res.ids])
    assert (other * want).sum(axis=1).min() >= 0.99999 and np.abs(other - want).max() < 1e-5


def test_clip_preprocess_forward_equals_embed(env_home):
    from aios_memory.plugins import get_provider

    p = get_provider("clip-vit-b-32")
    items = list(real_images().values())
    batch = p.preprocess_batch(items)
    assert batch.shape == (len(items), 3, 224, 224)
    vecs, cols = p.embed_preprocessed(batch, len(items))
    assert np.array_equal(vecs, p.embed_batch(items)) and cols == [{}] * len(items)
    with pytest.raises(UnsupportedMediaError):
        p.preprocess_batch([b"\x89PNG\r\n\x1a\n" + b"\0" * 40])


def test_whisper_preprocess_forward_equals_one_call_path(tmp_path_factory):
    from aios_memory_whisper.provider import WhisperProvider

    p = WhisperProvider(tmp_path_factory.mktemp("whisper_ingest"))
    p.install()
    clips = [Path("/usr/share/sounds/alsa/Front_Center.wav").read_bytes(), wav_bytes(0.7)]
    batch = p.preprocess_batch(clips)
    assert tuple(batch["mels"].shape) == (2, 80, 3000) and batch["silent"] == [False, False]
    vecs, cols = p.embed_preprocessed(batch, 2)
    assert np.array_equal(vecs, p.embed_batch(clips))  # _features: the path transcribe() uses
    assert cols[0]["transcript"] == p.transcribe(clips[0]) and "center" in cols[0]["transcript"].lower()


KILLED_IMPORT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from aios_memory import MemoryStore
    from aios_memory.ingest import ingest
    paths = sorted(Path(sys.argv[2]).iterdir())
    def committed(res):
        print("COMMIT", res.added, flush=True)
    ingest(MemoryStore(sys.argv[1]), paths, batch_size=4, commit_every=8, progress=False, on_commit=committed)
    print("DONE", flush=True)
    """
)


def test_sigkill_mid_import_leaves_whole_chunks(env_home, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    n = 400
    for i in range(n):
        (folder / f"{i:04d}.txt").write_text(f"memory {i}: " + " ".join(TEXTS[i % len(TEXTS)].split()[::-1]))
    env = {**os.environ, "AIOS_MEMORY_HOME": str(env_home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_IMPORT, str(tmp_path / "store"), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("COMMIT"):
            seen.append(int(line.split()[1]))
        if len(seen) == 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and seen == [8, 16, 24]
    store = MemoryStore(tmp_path / "store")
    assert not store.verify().get("problems")
    contents = sorted(store.sql("SELECT content FROM text_memories").column("content").to_pylist())
    assert len(contents) % 8 == 0 and len(contents) >= 24 and len(contents) < n  # whole chunks only
    want = sorted((folder / f"{i:04d}.txt").read_text() for i in range(len(contents)))
    assert contents == want  # the first files, in order, each exactly once


def test_cli_import_uses_the_pipeline(env_home, tmp_path):
    folder = tmp_path / "mixed"
    _image_files(folder)
    (folder / "note.txt").write_text("a note about the import command")
    (folder / "noise.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "clip.wav").write_bytes(b"RIFF....WAVEjunk")  # sniffed as audio, undecodable
    store = tmp_path / "store"
    env = {**os.environ, "AIOS_MEMORY_HOME": str(env_home)}
    out = run_cli("--store", str(store), "import", str(folder), "--commit-every", "3", env=env, check=False)
    assert out.returncode == 0, out.stderr
    files = len(list(folder.iterdir()))
    assert f"imported {files - 2} files" in out.stdout
    assert "noise.bin" in out.stderr and "clip.wav" in out.stderr


HUGE_IMPORT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from aios_memory import MemoryStore
    from aios_memory.ingest import ingest
    paths = [Path(p) for p in sys.argv[2:]]
    res = ingest(MemoryStore(sys.argv[1]), paths, progress=False)
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024
    print(json.dumps({"errors": [[e.index, e.error] for e in res.errors], "added": res.added, "peak_mib": peak}))
    """
)


def test_import_refuses_huge_files_and_fifos_before_reading_them(env_home, tmp_path):
    """A 1.5 GiB file with a PNG signature and a FIFO in an import: refused from stat and the header, the
    rest imported; the process never holds the big file (its peak stays far below 1.5 GiB)."""
    import json

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(1536 << 20)  # sparse: no disk used
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    note = tmp_path / "note.txt"
    note.write_text(TEXTS[0])
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_IMPORT, str(tmp_path / "store"), str(huge), str(fifo), str(note)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == [[0, "InputTooLargeError"], [1, "InvalidInputError"]]
    assert out["added"] == 1
    assert out["peak_mib"] < 700, out  # the model and torch, not the 1,536 MiB file

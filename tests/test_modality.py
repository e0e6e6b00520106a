"""Modality is inferred from the value's type and its bytes, never from a file name."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import png_bytes, wav_bytes
from PIL import Image

from aios_memory.errors import EmptyContentError, InvalidInputError, ModalityError, UnsupportedMediaError
from aios_memory.modality import prepare, sniff

ALSA = Path("/usr/share/sounds/alsa/Front_Center.wav")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes("astronaut", 64))).save(buf, format="JPEG")
    return buf.getvalue()


def test_text():
    item = prepare("hello")
    assert (item.modality, item.payload, item.content, item.media) == ("text", "hello", "hello", None)


@pytest.mark.parametrize(
    "data,modality,mime",
    [
        (png_bytes(size=16), "image", "image/png"),
        (_jpeg(), "image", "image/jpeg"),
        (wav_bytes(), "audio", "audio/wav"),
        (b"fLaC\x00\x00\x00\x22", "audio", "audio/flac"),
        (b"OggS\x00\x02", "audio", "audio/ogg"),
        (b"GIF89a\x01\x00", "image", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image", "image/webp"),
    ],
)
def test_sniffing_bytes(data, modality, mime):
    assert sniff(data) == (modality, mime)
    item = prepare(data)
    assert item.modality == modality and item.media == data and item.media_type == mime


def test_extension_is_ignored(tmp_path):
    lying = tmp_path / "photo.wav"  # PNG bytes behind an audio name
    lying.write_bytes(png_bytes(size=16))
    item = prepare(lying)
    assert item.modality == "image" and item.source == lying.resolve().as_uri()


@pytest.mark.skipif(not ALSA.exists(), reason="alsa-utils sounds are installed by .ci/run")
def test_real_wav_file_and_file_object(tmp_path):
    copy = tmp_path / "clip.bin"
    shutil.copy(ALSA, copy)
    assert prepare(copy).modality == "audio"
    with open(ALSA, "rb") as f:
        item = prepare(f)
    assert item.modality == "audio" and item.source == str(ALSA)


def test_pil_image_and_audio_tuple():
    img = Image.new("RGB", (8, 8), (255, 0, 0))
    item = prepare(img)
    assert item.modality == "image" and item.media.startswith(b"\x89PNG")
    audio = prepare((np.zeros(1600, dtype=np.float32), 16000))
    assert audio.modality == "audio" and sniff(audio.media) == ("audio", "audio/wav")


def test_rejections(tmp_path):
    with pytest.raises(UnsupportedMediaError):
        prepare(b"%PDF-1.7 not supported")
    with pytest.raises(EmptyContentError):
        prepare(b"")
    with pytest.raises(EmptyContentError):
        prepare("   ")
    with pytest.raises(EmptyContentError):
        prepare((np.zeros(0), 16000))
    with pytest.raises(InvalidInputError):
        prepare((np.zeros(10), 0))
    with pytest.raises(InvalidInputError, match="no such file"):
        prepare(tmp_path / "absent.png")
    with pytest.raises(InvalidInputError, match="binary mode"):
        prepare(io.StringIO("text file object"))
    with pytest.raises(InvalidInputError):
        prepare("has a \x00 NUL")
    with pytest.raises(ModalityError):
        prepare(png_bytes(size=16), modality="audio")
    with pytest.raises(InvalidInputError, match="cannot store a dict"):
        prepare({"a": 1})

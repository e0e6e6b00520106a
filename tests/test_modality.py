"""Modality is inferred from the value's type and its bytes, never from a file name."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import png_bytes, wav_bytes
from PIL import Image

from aios_memory.errors import (
    EmptyContentError,
    InputTooLargeError,
    InvalidInputError,
    ModalityError,
    UnsupportedMediaError,
)
from aios_memory.modality import MAX_MEDIA_BYTES, prepare, sniff

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


@pytest.mark.skipif(not ALSA.exists(), reason="alsa-utils is not installed: apt-get install alsa-utils")
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


# --- limits checked before reading: stat, then a 64 KiB head, then the header, and only then the rest ---
MiB = 1 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR claiming ``width`` x ``height`` and an IDAT: Pillow reads this far only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def _wav_header(frames: int, rate: int = 1000) -> bytes:
    """A WAV header (8-bit mono at ``rate`` Hz) declaring ``frames`` frames of data."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    return (
        b"RIFF" + struct.pack("<I", 36 + frames) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", frames)
    )  # fmt: skip


def _sparse(path: Path, head: bytes, size: int) -> Path:
    """A real file of ``size`` bytes starting with ``head``, the rest a hole (no disk, no time)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


_PEAK_RSS = """
import json, resource, sys
from pathlib import Path
from aios_memory.modality import prepare
try:
    prepare(Path(sys.argv[1]))
    error = None
except Exception as exc:
    error = [type(exc).__name__, str(exc)]
try:  # this process's own peak: ru_maxrss starts at the parent's peak on Linux (kept across fork+exec)
    with open("/proc/self/status") as f:
        rss = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = rss if sys.platform == "darwin" else rss * 1024
print(json.dumps({"error": error, "rss": rss}))
"""


def _prepare_in_subprocess(path: Path) -> tuple[list[str] | None, int]:
    """(error type and message, peak RSS in bytes) of ``prepare(Path(path))`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["error"], out["rss"]


@pytest.mark.parametrize(
    "name,head,size",
    [
        ("1.5 GiB PNG signature", PNG_MAGIC, 1536 * MiB),
        ("600 MiB PNG signature", PNG_MAGIC, 600 * MiB),
        ("400 MiB PNG claiming 100000x100000", _png_header(100_000, 100_000), 400 * MiB),
        ("400 MiB WAV claiming 111 hours", _wav_header(400 * MiB), 400 * MiB),
    ],
)
def test_limits_are_checked_before_the_file_is_read(tmp_path, name, head, size):
    """Peak RSS before the fix: 1,564 / 628 / 432 / 430 MiB (each file read whole, then refused); now
    refused from stat or the header at ~28 MiB."""
    path = _sparse(tmp_path / "big.png", head, size)
    error, rss = _prepare_in_subprocess(path)
    assert rss < 200 * MiB, f"{name}: peak RSS {rss / MiB:.0f} MiB"
    assert error is not None and error[0] == "InputTooLargeError", error
    if size > MAX_MEDIA_BYTES:
        assert error[1] == f"media content is {size} bytes; the limit is {MAX_MEDIA_BYTES} ({path})"


@pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, kind):
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this platform")
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path / "photos.png"
        path.mkdir()
    else:
        path = Path(kind)
        if not path.exists():
            pytest.skip("no /dev/zero")
    error, rss = _prepare_in_subprocess(path)  # an open() or read() that blocks hits the timeout
    assert error is not None and error[0] == "InvalidInputError", error
    assert str(path) in error[1]
    assert ("is a directory" if kind == "directory" else "not a regular file") in error[1]
    assert rss < 200 * MiB


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EmptyContentError, match="empty.png"):
        prepare(tmp_path / "empty.png")


class CountingReader(io.BufferedReader):
    """A seekable binary file object that counts the bytes it hands out."""

    def __init__(self, path: Path):
        super().__init__(io.FileIO(path, "rb"))
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


def test_seekable_file_object_header_refused_before_the_rest_is_read(tmp_path):
    path = _sparse(tmp_path / "claims.png", _png_header(100_000, 100_000), 10 * MiB)
    with CountingReader(path) as f, pytest.raises(InputTooLargeError, match="100000x100000|bomb"):
        prepare(f)
    assert 0 < f.bytes_read <= 64 * 1024  # the head only, not the 10 MiB


def test_seekable_file_object_unknown_format_refused_from_its_head(tmp_path):
    path = _sparse(tmp_path / "doc.png", b"%PDF-1.7\n", 10 * MiB)
    with CountingReader(path) as f, pytest.raises(UnsupportedMediaError, match="PDF"):
        prepare(f)
    assert 0 < f.bytes_read <= 64 * 1024


def test_seekable_file_object_over_the_limit_refused_unread(tmp_path):
    path = _sparse(tmp_path / "big.png", PNG_MAGIC, 600 * MiB)
    with CountingReader(path) as f, pytest.raises(InputTooLargeError, match=f"limit is {MAX_MEDIA_BYTES}"):
        prepare(f)
    assert f.bytes_read == 0
    with CountingReader(path) as f:  # from its position: what is left is under the limit
        f.seek(600 * MiB - 16)
        with pytest.raises(UnsupportedMediaError):
            prepare(f)
    assert f.bytes_read == 16


def test_file_objects_are_read_from_their_position(tmp_path):
    png = png_bytes(size=16)
    path = tmp_path / "framed.bin"
    path.write_bytes(b"junk" + png)
    with CountingReader(path) as f:
        f.seek(4)
        item = prepare(f)
    assert item.media == png and item.source == str(path)
    assert f.bytes_read == len(png)  # the head was all of it: read once


class NonSeekable(io.RawIOBase):
    """A real file behind a stream that cannot seek (like a pipe or a socket)."""

    def __init__(self, path: Path):
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        return self._f.readinto(buffer)

    def close(self) -> None:
        self._f.close()
        super().close()


def test_non_seekable_file_object_still_works(tmp_path):
    png, wav = png_bytes(size=16), wav_bytes()
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "a.wav").write_bytes(wav)
    with NonSeekable(tmp_path / "a.png") as f:
        item = prepare(io.BufferedReader(f))
    assert (item.modality, item.media, item.source) == ("image", png, str(tmp_path / "a.png"))
    with NonSeekable(tmp_path / "a.wav") as f:
        item = prepare(f)
    assert (item.modality, item.media) == ("audio", wav)
    (tmp_path / "claims.png").write_bytes(_png_header(100_000, 100_000))
    with NonSeekable(tmp_path / "claims.png") as f, pytest.raises(InputTooLargeError):
        prepare(f)


def test_path_media_reads_whole_after_the_checks(tmp_path):
    png, wav = png_bytes(size=16), wav_bytes()
    (tmp_path / "a").write_bytes(png)
    (tmp_path / "b").write_bytes(wav)
    assert prepare(tmp_path / "a").media == png
    audio = prepare(tmp_path / "b")
    assert (audio.modality, audio.media) == ("audio", wav)
    with pytest.raises(UnsupportedMediaError):
        prepare(_sparse(tmp_path / "c.png", b"%PDF-1.7\n", 1 * MiB))

"""What kind of memory a piece of content is: decided from the value's type and its bytes, never a name.

``prepare`` turns whatever a caller hands to ``MemoryStore.add`` into an :class:`Item`: its modality, the
payload a provider embeds, and what the store keeps (text, or media bytes with their MIME type).
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aios_memory.errors import (
    EmptyContentError,
    InputTooLargeError,
    InvalidInputError,
    ModalityError,
    UnsupportedMediaError,
)
from aios_memory.provider import MODALITIES
from aios_memory.video_input import check_video_header

# Documented input limits (docs/reliability.md); over one, ``prepare`` raises ``InputTooLargeError``
# before any provider, decoder or allocation sized by the input runs.
MAX_TEXT_CHARS = 10_000_000
MAX_MEDIA_BYTES = 512 * 1024 * 1024
MAX_SAMPLE_RATE = 384_000
MAX_SOURCE_CHARS = 65_536
MAX_IMAGE_PIXELS = 178_956_970  # Pillow's decompression-bomb error threshold (2x its warning threshold)
MAX_IMAGE_ASPECT = 1_000  # long side / short side: models resize the short side up, the long side follows
MAX_AUDIO_SECONDS = 3_600  # one hour: 120 Whisper windows; 8 hours at 16 kHz would be 1.8 GB of float32

# Files and seekable file objects: this much is read first, to sniff the format and check the header,
# before the rest is read (every header Pillow and libsndfile need for the size checks fits in it).
_HEAD_BYTES = 64 * 1024

# (offset, magic, second check (offset, bytes) or None, modality, MIME type)
_SIGNATURES: list[tuple[int, bytes, tuple[int, bytes] | None, str, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", None, "image", "image/png"),
    (0, b"\xff\xd8\xff", None, "image", "image/jpeg"),
    (0, b"GIF87a", None, "image", "image/gif"),
    (0, b"GIF89a", None, "image", "image/gif"),
    (0, b"RIFF", (8, b"WEBP"), "image", "image/webp"),
    (0, b"II*\x00", None, "image", "image/tiff"),
    (0, b"MM\x00*", None, "image", "image/tiff"),
    (0, b"BM", None, "image", "image/bmp"),
    (0, b"RIFF", (8, b"WAVE"), "audio", "audio/wav"),
    (0, b"fLaC", None, "audio", "audio/flac"),
    (0, b"OggS", None, "audio", "audio/ogg"),
    (0, b"ID3", None, "audio", "audio/mpeg"),
    (0, b"FORM", (8, b"AIFF"), "audio", "audio/aiff"),
    (4, b"ftypM4A", None, "audio", "audio/mp4"),
    (4, b"ftypqt  ", None, "video", "video/quicktime"),
    (4, b"ftyp", None, "video", "video/mp4"),  # any other ISO base media brand: isom, mp42, avc1, ...
    (0, b"\x1a\x45\xdf\xa3", None, "video", "video/x-matroska"),  # EBML: Matroska, or WebM (below)
    (0, b"RIFF", (8, b"AVI "), "video", "video/x-msvideo"),
]


def sniff(data: bytes) -> tuple[str, str]:
    """(modality, MIME type) of media bytes, from their leading bytes."""
    head = bytes(data[:32])
    for offset, magic, second, modality, mime in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic and (
            second is None or head[second[0] : second[0] + len(second[1])] == second[1]
        ):
            if mime == "video/x-matroska" and b"webm" in bytes(data[:64]):
                return modality, "video/webm"
            return modality, mime
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return "audio", "audio/mpeg"
    raise UnsupportedMediaError(
        f"content is neither a known image (PNG, JPEG, GIF, WebP, TIFF, BMP) nor a known audio format "
        f"(WAV, FLAC, Ogg, MP3, AIFF, M4A) nor a known video container (MP4, MOV, WebM, MKV, AVI); first bytes: {head[:12]!r}"
    )


@dataclass
class Item:
    modality: str
    payload: Any  # what the provider embeds: str, media bytes, or (samples, sample_rate)
    content: str | None = None  # text memories: the text itself
    media: bytes | None = None  # image and audio memories: the original bytes
    media_type: str | None = None
    source: str | None = None


def _utf8(value: str, what: str) -> None:
    """Refuse strings Arrow and DuckDB cannot store: lone surrogates (e.g. from ``surrogateescape``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode (it cannot be encoded as UTF-8): {exc}"
        ) from None


def _check_source(source: Any) -> str | None:
    if source is None:
        return None
    if not isinstance(source, str):
        raise InvalidInputError(f"source must be a string (a URI) or None, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise InputTooLargeError(f"source has {len(source)} characters; the limit is {MAX_SOURCE_CHARS}")
    if "\x00" in source:
        raise InvalidInputError("source contains a NUL character")
    _utf8(source, "source")
    return source


def _check_image_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {MAX_IMAGE_PIXELS}"
        )
    if max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
        raise InputTooLargeError(
            f"image is {width}x{height}: one side is more than {MAX_IMAGE_ASPECT} times the other"
        )


def _check_image_header(data: bytes | io.BufferedIOBase) -> None:
    """Read only the image header (Pillow decodes no pixels here) and check its dimensions; a header
    Pillow cannot read is left to the provider's decoder, which owns the formats it accepts. ``data``
    is the bytes, or an open file Pillow reads the header from (it reads no further)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise InputTooLargeError(f"image refused as a decompression bomb: {exc}") from None
    except Exception:  # noqa: BLE001 - unreadable here; the provider's decoder gives the typed error
        return
    _check_image_size(width, height)


def _check_audio_duration(frames: int, sample_rate: int) -> None:
    if sample_rate > 0 and frames / sample_rate > MAX_AUDIO_SECONDS:
        raise InputTooLargeError(
            f"audio is {frames / sample_rate:.0f} s long; the limit is {MAX_AUDIO_SECONDS} s "
            "(split longer recordings)"
        )


def _check_audio_header(data: bytes | io.BufferedIOBase) -> None:
    """Duration from the header where libsndfile reads one (WAV, FLAC, Ogg, AIFF, MP3); else left to
    the provider's decoder, bounded by ``MAX_MEDIA_BYTES``. ``data`` is the bytes or an open file."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Exception:  # noqa: BLE001 - unreadable here; the provider's decoder gives the typed error
        return
    if not 0 < int(info.samplerate) <= MAX_SAMPLE_RATE:
        raise InvalidInputError(
            f"audio header says {info.samplerate} Hz; sample rates from 1 to {MAX_SAMPLE_RATE} Hz are accepted"
        )
    _check_audio_duration(int(info.frames), int(info.samplerate))


_HEADER_CHECKS = {"image": _check_image_header, "audio": _check_audio_header, "video": check_video_header}


def _at(where: str | None) -> str:
    return f" ({where})" if where else ""


def _check_media_size(size: int, where: str | None) -> None:
    if size == 0:
        raise EmptyContentError(f"media content is empty (0 bytes){_at(where)}")
    if size > MAX_MEDIA_BYTES:
        raise InputTooLargeError(f"media content is {size} bytes; the limit is {MAX_MEDIA_BYTES}{_at(where)}")


def _read_path(path: Path, source: str | None) -> Item:
    """A file: refused from ``stat`` (not a regular file, empty, over the limit) before it is opened,
    and from its first ``_HEAD_BYTES`` and its header (format, image size, audio duration) before the
    rest is read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path}") from None
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL in the path
        raise InvalidInputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    _check_regular(st, path)
    _check_media_size(st.st_size, str(path))
    try:
        # O_NONBLOCK: were the file swapped for a FIFO since the stat, opening it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)  # what was opened, which is what is read
        _check_regular(st, path)
        _check_media_size(st.st_size, str(path))
        try:
            modality, _ = sniff(f.read(_HEAD_BYTES))  # an unknown format is refused here, the rest unread
            f.seek(0)
            _HEADER_CHECKS[modality](f)
        except InvalidInputError as exc:  # the same error, naming the file
            raise type(exc)(f"{exc}{_at(str(path))}") from None
        f.seek(0)
        data = f.read(st.st_size + 1)
        if len(data) > st.st_size:  # the file grew since the stat: read on, still bounded
            data += f.read(MAX_MEDIA_BYTES + 1 - len(data))
    return _read_media(data, source)


def _check_regular(st: os.stat_result, path: Path) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"{path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{path} is not a regular file (a FIFO, socket or device cannot be stored)")


def _remaining(f: Any) -> int | None:
    """Bytes left in a seekable file object from its position, or None where that cannot be known."""
    try:
        if not f.seekable():
            return None
        start = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(start)
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    return max(end - start, 0)


def _read_file_object(f: Any, source: str | None) -> Item:
    """A binary file object, from its current position. Seekable: refused from its size before a byte
    is read, and from its first ``_HEAD_BYTES`` (format, image size) before the rest is read. Not
    seekable: read at most ``MAX_MEDIA_BYTES`` + 1 bytes."""
    if isinstance(f, io.TextIOBase):
        raise InvalidInputError("file objects must be opened in binary mode ('rb')")
    where = source or getattr(f, "name", None) and str(f.name)
    size = _remaining(f)
    if size is None:
        return _read_media(_read_bytes(f, MAX_MEDIA_BYTES + 1), where)  # never more than the limit
    _check_media_size(size, where)
    start = f.tell()
    head = _read_bytes(f, _HEAD_BYTES)
    if len(head) < size:  # else the head is all of it, checked below
        modality, _ = sniff(head)
        if modality == "image":
            _check_image_header(head)  # exact: the dimensions are in the head; unreadable → checked below
        f.seek(start)
        head = b""
    return _read_media(head or _read_bytes(f, min(size, MAX_MEDIA_BYTES) + 1), where)


def _read_bytes(f: Any, size: int) -> bytes:
    data = f.read(size)
    if isinstance(data, str):
        raise InvalidInputError("file objects must be opened in binary mode ('rb')")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"the file object's read() returned {type(data).__name__}, not bytes")
    return bytes(data)


def _read_media(data: bytes, source: str | None) -> Item:
    _check_media_size(len(data), source)
    modality, mime = sniff(data)
    _HEADER_CHECKS[modality](data)
    return Item(modality, data, media=data, media_type=mime, source=source)


def _encode_pil(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _encode_audio(samples: Any, sr: int) -> bytes:
    import numpy as np
    import soundfile

    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] < arr.shape[1]:  # (channels, samples) as librosa returns it
        arr = arr.T
    buf = io.BytesIO()
    soundfile.write(buf, arr, int(sr), format="WAV", subtype="FLOAT")
    return buf.getvalue()


def prepare(content: Any, modality: str | None = None, source: str | None = None) -> Item:
    """Classify ``content`` and return the :class:`Item` the store embeds and keeps."""
    if modality is not None and modality not in MODALITIES:
        raise InvalidInputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    item = _prepare(content, _check_source(source))
    if modality is not None and item.modality != modality:
        raise ModalityError(f"content is {item.modality}, but modality={modality!r} was requested")
    return item


def prepare_many(contents: list[Any], modality: str | None, sources: list[str | None]) -> list[Item]:
    """:func:`prepare` of each item; a list of plain texts without sources is checked in bulk (one
    join, one UTF-8 encode), and any problem is found and reported by :func:`prepare` item by item."""
    if (
        modality in (None, "text")
        and all(type(c) is str for c in contents)
        and all(s is None for s in sources)
        and all(map(str.strip, contents))
        and max(map(len, contents), default=0) <= MAX_TEXT_CHARS
    ):
        joined = "".join(contents)
        if "\x00" not in joined:
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                return [Item("text", c, c) for c in contents]
    return [prepare(c, modality, s) for c, s in zip(contents, sources, strict=True)]


def _prepare(content: Any, source: str | None) -> Item:
    if isinstance(content, str):
        if not content.strip():
            raise EmptyContentError("text is empty or whitespace only")
        if len(content) > MAX_TEXT_CHARS:
            raise InputTooLargeError(f"text has {len(content)} characters; the limit is {MAX_TEXT_CHARS}")
        if "\x00" in content:
            raise InvalidInputError("text contains a NUL character")
        _utf8(content, "text")
        return Item("text", content, content=content, source=source)
    if isinstance(content, Path):
        return _read_path(content, source or content.resolve().as_uri())
    if isinstance(content, (bytes, bytearray, memoryview)):
        return _read_media(bytes(content), source)
    if type(content).__module__.startswith("PIL.") and hasattr(content, "save"):
        _check_image_size(*content.size)
        data = _encode_pil(content)
        return Item("image", content, media=data, media_type="image/png", source=source)
    if isinstance(content, tuple) and len(content) == 2 and isinstance(content[1], int):
        samples, sr = content
        if not 0 < sr <= MAX_SAMPLE_RATE:
            raise InvalidInputError(f"sample rate must be from 1 to {MAX_SAMPLE_RATE} Hz, got {sr}")
        try:
            import numpy as np

            with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
                arr = np.asarray(samples, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"audio samples must be a numeric array: {exc}") from exc
        if arr.ndim not in (1, 2):
            raise InvalidInputError(
                f"audio samples must be 1-D (mono) or 2-D (channels), got shape {arr.shape}"
            )
        if arr.size == 0:
            raise EmptyContentError("audio has no samples")
        frames = arr.shape[1] if arr.ndim == 2 and arr.shape[0] < arr.shape[1] else arr.shape[0]
        _check_audio_duration(frames, sr)  # before any pass over (or copy of) the samples
        if arr.nbytes > MAX_MEDIA_BYTES:
            raise InputTooLargeError(
                f"audio is {arr.nbytes} bytes as float32 WAV; the limit is {MAX_MEDIA_BYTES}"
            )
        if not np.isfinite(arr).all():
            raise InvalidInputError("audio samples contain NaN or infinite values")
        return Item("audio", (arr, sr), media=_encode_audio(arr, sr), media_type="audio/wav", source=source)
    if hasattr(content, "read"):
        return _read_file_object(content, source)
    raise InvalidInputError(
        f"cannot store a {type(content).__name__}: give text (str), a file path (pathlib.Path), bytes, "
        "a binary file object, a PIL image, or (samples, sample_rate) audio"
    )

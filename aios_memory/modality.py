"""What kind of memory a piece of content is: decided from the value's type and its bytes, never a name.

``prepare`` turns whatever a caller hands to ``MemoryStore.add`` into an :class:`Item`: its modality, the
payload a provider embeds, and what the store keeps (text, or media bytes with their MIME type).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aios_memory.errors import EmptyContentError, InvalidInputError, ModalityError, UnsupportedMediaError
from aios_memory.provider import MODALITIES

MAX_TEXT_CHARS = 10_000_000
MAX_MEDIA_BYTES = 512 * 1024 * 1024
MAX_SAMPLE_RATE = 384_000

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
]


def sniff(data: bytes) -> tuple[str, str]:
    """(modality, MIME type) of media bytes, from their leading bytes."""
    head = bytes(data[:32])
    for offset, magic, second, modality, mime in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic and (
            second is None or head[second[0] : second[0] + len(second[1])] == second[1]
        ):
            return modality, mime
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return "audio", "audio/mpeg"
    raise UnsupportedMediaError(
        f"content is neither a known image (PNG, JPEG, GIF, WebP, TIFF, BMP) nor a known audio format "
        f"(WAV, FLAC, Ogg, MP3, AIFF, M4A); first bytes: {head[:12]!r}"
    )


@dataclass
class Item:
    modality: str
    payload: Any  # what the provider embeds: str, media bytes, or (samples, sample_rate)
    content: str | None = None  # text memories: the text itself
    media: bytes | None = None  # image and audio memories: the original bytes
    media_type: str | None = None
    source: str | None = None


def _read_media(data: bytes, source: str | None) -> Item:
    if len(data) == 0:
        raise EmptyContentError(f"media content is empty (0 bytes){f' at {source}' if source else ''}")
    if len(data) > MAX_MEDIA_BYTES:
        raise InvalidInputError(f"media content is {len(data)} bytes; the limit is {MAX_MEDIA_BYTES}")
    modality, mime = sniff(data)
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
    item = _prepare(content, source)
    if modality is not None and item.modality != modality:
        raise ModalityError(f"content is {item.modality}, but modality={modality!r} was requested")
    return item


def _prepare(content: Any, source: str | None) -> Item:
    if isinstance(content, str):
        if not content.strip():
            raise EmptyContentError("text is empty or whitespace only")
        if len(content) > MAX_TEXT_CHARS:
            raise InvalidInputError(f"text has {len(content)} characters; the limit is {MAX_TEXT_CHARS}")
        if "\x00" in content:
            raise InvalidInputError("text contains a NUL character")
        return Item("text", content, content=content, source=source)
    if isinstance(content, Path):
        if not content.is_file():
            raise InvalidInputError(f"no such file: {content}")
        return _read_media(content.read_bytes(), source or content.resolve().as_uri())
    if isinstance(content, (bytes, bytearray, memoryview)):
        return _read_media(bytes(content), source)
    if type(content).__module__.startswith("PIL.") and hasattr(content, "save"):
        data = _encode_pil(content)
        return Item("image", content, media=data, media_type="image/png", source=source)
    if isinstance(content, tuple) and len(content) == 2 and isinstance(content[1], int):
        samples, sr = content
        if not 0 < sr <= MAX_SAMPLE_RATE:
            raise InvalidInputError(f"sample rate must be from 1 to {MAX_SAMPLE_RATE} Hz, got {sr}")
        try:
            import numpy as np

            arr = np.asarray(samples, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"audio samples must be a numeric array: {exc}") from exc
        if arr.ndim not in (1, 2):
            raise InvalidInputError(
                f"audio samples must be 1-D (mono) or 2-D (channels), got shape {arr.shape}"
            )
        if arr.size == 0:
            raise EmptyContentError("audio has no samples")
        if not np.isfinite(arr).all():
            raise InvalidInputError("audio samples contain NaN or infinite values")
        return Item("audio", (arr, sr), media=_encode_audio(arr, sr), media_type="audio/wav", source=source)
    if hasattr(content, "read"):
        data = content.read()
        if isinstance(data, str):
            raise InvalidInputError("file objects must be opened in binary mode ('rb')")
        return _read_media(data, source or getattr(content, "name", None) and str(content.name))
    raise InvalidInputError(
        f"cannot store a {type(content).__name__}: give text (str), a file path (pathlib.Path), bytes, "
        "a binary file object, a PIL image, or (samples, sample_rate) audio"
    )

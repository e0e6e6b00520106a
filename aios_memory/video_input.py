"""Video input checks, made before any frame is decoded: PyAV is there, and the container's header is
within the documented limits (duration, frame size, frame count). Only video needs PyAV (``av``)."""

from __future__ import annotations

import io
from typing import Any

from aios_memory.errors import InputTooLargeError, InvalidInputError, UnsupportedMediaError

MAX_VIDEO_SECONDS = 3_600  # checked from the container's header before any frame is decoded
MAX_VIDEO_PIXELS = 7680 * 4320  # one frame (8K UHD)
MAX_VIDEO_FRAMES = 216_000  # one hour at 60 frames per second (also counted while decoding)
VIDEO_INSTALL = "pip install 'aios-memory[video]' (PyAV, which ships FFmpeg in its wheel)"


def require_av() -> Any:
    """The ``av`` module (PyAV), or an error naming what to install: video needs it, nothing else does."""
    try:
        import av
    except ImportError:
        raise UnsupportedMediaError(f"video memories need PyAV: {VIDEO_INSTALL}") from None
    return av


def check_video_header(data: bytes | io.BufferedIOBase) -> None:
    """Open the container and check duration, frame size and frame count from its header (no frame is
    decoded): over a limit is ``InputTooLargeError``; an unreadable header (damaged, truncated) or no video
    stream is a typed error too, as only PyAV can decode video. ``data`` is the bytes or an open file."""
    av = require_av()
    try:
        with av.open(io.BytesIO(data) if isinstance(data, bytes) else data, mode="r") as c:
            if not c.streams.video:
                raise UnsupportedMediaError("the file has no video stream (for audio alone, add it as audio)")
            v = c.streams.video[0]
            width, height = int(v.codec_context.width or 0), int(v.codec_context.height or 0)
            seconds = float(c.duration) / 1_000_000 if c.duration else 0.0  # AV_TIME_BASE
            if v.duration and v.time_base:
                seconds = max(seconds, float(v.duration * v.time_base))
            rate = float(v.average_rate or v.guessed_rate or 0)
            frames = int(v.frames or 0) or int(seconds * rate)
    except av.FFmpegError as exc:
        raise InvalidInputError(f"video cannot be read (damaged or truncated?): {exc}") from None
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"video header gives no frame size ({width}x{height})")
    if width * height > MAX_VIDEO_PIXELS:
        raise InputTooLargeError(
            f"video frames are {width}x{height} = {width * height} pixels; the limit is {MAX_VIDEO_PIXELS}"
        )
    if seconds > MAX_VIDEO_SECONDS:
        raise InputTooLargeError(f"video is {seconds:.1f} s long; the limit is {MAX_VIDEO_SECONDS} s")
    if frames > MAX_VIDEO_FRAMES:
        raise InputTooLargeError(f"video has {frames} frames; the limit is {MAX_VIDEO_FRAMES}")

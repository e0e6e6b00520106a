"""Decode a video with PyAV into segments: sampled frames, scene changes, and the audio track at 16 kHz.

Frames are sampled at ``rate`` per second (the first decoded frame at or after each tick) plus the first
frame of every scene; a scene starts where a frame differs from the previous decoded frame by more than
``scene_threshold`` (mean absolute difference of 32x32 grayscale thumbnails, 0..1). A segment is a scene,
cut again every ``max_segment_s`` seconds. Times are presentation times from the container, so a variable
frame-rate file keeps its real timestamps.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aios_memory import video_input
from aios_memory.errors import InputTooLargeError, InvalidInputError, UnsupportedMediaError
from aios_memory.video_input import check_video_header, require_av

AUDIO_RATE = 16_000
_SMALL = 32  # side of the grayscale thumbnails compared for scene changes


@dataclass
class Segment:
    """One row of a video memory: ``[start_s, end_s)``, its sampled frames (RGB uint8) and their times,
    and its audio (16 kHz mono float32; ``None`` when the file has no audio track)."""

    start_s: float
    end_s: float
    frames: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    audio: np.ndarray | None = None

    @property
    def representative(self) -> int:
        """Index of the sampled frame nearest the segment's middle."""
        mid = (self.start_s + self.end_s) / 2
        return int(np.argmin([abs(t - mid) for t in self.times]))


@dataclass
class Decoded:
    """Every decoded frame's time, the sampled frames, the scene starts and the audio of one video."""

    frame_times: list[float]
    sampled: list[tuple[float, np.ndarray]]
    scene_starts: list[float]
    end_s: float
    audio: np.ndarray | None


_PLANAR_8BIT = {"yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuv411p", "nv12", "nv21", "gray"}
_FULL_RANGE = {"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "gray"}


def _luma(frame: Any) -> np.ndarray:
    """A ``_SMALL`` x ``_SMALL`` grayscale version of ``frame`` in 0..1: the block means of its Y plane
    where the frame is 8-bit planar YUV (no conversion: most decoders output that), else by swscale."""
    name = frame.format.name
    h, w = frame.height, frame.width
    if (name in _PLANAR_8BIT or name in _FULL_RANGE) and h >= _SMALL and w >= _SMALL:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)[:, :w].astype(np.float32)
        rows, cols = (np.arange(_SMALL) * h) // _SMALL, (np.arange(_SMALL) * w) // _SMALL
        sums = np.add.reduceat(np.add.reduceat(y, rows, axis=0), cols, axis=1)
        counts = np.outer(np.diff([*rows, h]), np.diff([*cols, w]))
        if name in _FULL_RANGE:
            return sums / counts / 255.0
        return (sums / counts - 16.0) / 219.0  # limited (TV) range: Y from 16 to 235
    small = frame.reformat(width=_SMALL, height=_SMALL, format="gray").to_ndarray()
    return small.astype(np.float32) / 255.0


def _open(data: bytes) -> Any:
    av = require_av()
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        raise InvalidInputError(f"video cannot be read (damaged or truncated?): {exc}") from None


def decode(data: bytes, rate: float = 1.0, scene_threshold: float = 0.15) -> Decoded:
    """Decode ``data`` (a whole video file): sampled frames, scene starts, frame times and 16 kHz audio.
    A damaged or truncated stream is an ``InvalidInputError``; nothing is returned for part of a file."""
    av = require_av()
    check_video_header(data)
    with _open(data) as container:
        if not container.streams.video:
            raise UnsupportedMediaError("the file has no video stream (for audio alone, add it as audio)")
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        astream = container.streams.audio[0] if container.streams.audio else None
        streams = [vstream] + ([astream] if astream is not None else [])
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE) if astream else None
        times: list[float] = []
        sampled: list[tuple[float, np.ndarray]] = []
        scenes: list[float] = []
        audio: list[np.ndarray] = []
        audio_start: float | None = None
        prev: np.ndarray | None = None
        tick = 0.0
        last_duration = 0.0
        try:
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        if audio_start is None and frame.time is not None:
                            audio_start = float(frame.time)
                        for out in resampler.resample(frame):  # type: ignore[union-attr]
                            audio.append(out.to_ndarray().reshape(-1))
                        continue
                    if frame.time is None:
                        continue
                    t = float(frame.time)
                    times.append(t)
                    if len(times) > video_input.MAX_VIDEO_FRAMES:  # a header that understated it
                        raise InputTooLargeError(f"video has more than {video_input.MAX_VIDEO_FRAMES} frames")
                    if frame.duration and frame.time_base:
                        last_duration = float(frame.duration * frame.time_base)
                    small = _luma(frame)
                    cut = prev is None or float(np.abs(small - prev).mean()) > scene_threshold
                    prev = small
                    if cut:
                        scenes.append(t)
                    if cut or t >= tick - 1e-9:
                        sampled.append((t, frame.to_ndarray(format="rgb24")))
                        while tick <= t + 1e-9:
                            tick += 1.0 / rate
            if resampler is not None:
                for out in resampler.resample(None):
                    audio.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise InvalidInputError(f"video cannot be decoded (damaged or truncated?): {exc}") from None
    if not times:
        raise InvalidInputError("the video stream holds no decodable frames")
    if last_duration <= 0:
        last_duration = (times[-1] - times[0]) / max(len(times) - 1, 1)
    samples = None
    if audio:
        samples = np.concatenate(audio).astype(np.float32)
        lead = int(round((audio_start or 0.0) * AUDIO_RATE))  # audio that starts late: pad to video time
        if lead > 0:
            samples = np.concatenate([np.zeros(lead, np.float32), samples])
    return Decoded(times, sampled, scenes, times[-1] + last_duration, samples)


def segments(decoded: Decoded, max_segment_s: float = 10.0) -> list[Segment]:
    """Cut ``decoded`` at its scene starts and every ``max_segment_s`` seconds within a scene."""
    bounds: list[float] = []
    starts = [*decoded.scene_starts, decoded.end_s]
    for a, b in zip(starts, starts[1:], strict=False):
        t = a
        while t < b - 1e-9:
            bounds.append(t)
            t += max_segment_s
    bounds.append(decoded.end_s)
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        seg = Segment(a, b)
        for t, img in decoded.sampled:
            if a - 1e-9 <= t < b - 1e-9:
                seg.frames.append(img)
                seg.times.append(t)
        if not seg.frames:  # a cut within a scene between two samples: its first sample is the frame at a
            t, img = min(decoded.sampled, key=lambda p: abs(p[0] - a))
            seg.frames.append(img)
            seg.times.append(t)
        if decoded.audio is not None:
            seg.audio = decoded.audio[int(round(a * AUDIO_RATE)) : int(round(b * AUDIO_RATE))]
        out.append(seg)
    return out


def thumbnail(frame: np.ndarray, size: int = 160, quality: int = 80) -> bytes:
    """A JPEG of ``frame`` whose long side is at most ``size`` pixels."""
    from PIL import Image

    img = Image.fromarray(frame)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()

"""The video provider: one row per segment, composed from the registered CLIP and Whisper providers.

``expand`` decodes a video (PyAV, ``decode.py``) into segments (scenes, cut again every ``max_segment_s``)
with their ``start_s``/``end_s`` and a JPEG thumbnail of the representative frame. Embedding a segment
runs the CLIP provider on its sampled frames (the row's ``embedding`` is their mean, normalised;
``frame_embedding`` is the representative frame's vector) and the Whisper provider on its audio (the
``transcript``, which the store embeds with its text provider). No model code lives here: the two
providers are looked up by name in the plugin registry when first needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from aios_memory.errors import InvalidInputError, ModelNotInstalledError
from aios_memory.provider import EmbeddingProvider

RATE_ENV = "AIOS_MEMORY_VIDEO_FPS"  # frames sampled per second (default 1)


@dataclass
class _Batch:
    """``preprocess`` result: CLIP pixels of every sampled frame, which frames each segment owns, and
    Whisper's log-mels of the segments with audio."""

    pixels: Any
    spans: list[tuple[int, int, int]]  # (first frame, end frame, representative frame) per segment
    audio: Any
    has_audio: list[int]  # indices of the segments whose audio Whisper transcribes


class VideoProvider(EmbeddingProvider):
    name = "clip-whisper-video"
    modality = "video"
    dim = 512
    # image and text queries rank the segments' pooled frames through CLIP's two towers; a text query also
    # ranks the transcripts (the table's text provider), and a search fuses both signals
    query_modalities = frozenset({"image", "text"})
    model_name = None
    version = "1"

    def __init__(
        self,
        clip: str | EmbeddingProvider = "clip-vit-b-32",
        whisper: str | EmbeddingProvider = "whisper-base",
        rate: float | None = None,
        scene_threshold: float = 0.15,
        max_segment_s: float = 10.0,
    ) -> None:
        super().__init__()
        self._clip_ref, self._whisper_ref = clip, whisper
        rate = float(os.environ.get(RATE_ENV, "1")) if rate is None else rate
        for what, v in (
            ("rate", rate),
            ("scene_threshold", scene_threshold),
            ("max_segment_s", max_segment_s),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
                raise InvalidInputError(f"{what} must be a positive number, got {v!r}")
        self.rate, self.scene_threshold, self.max_segment_s = float(rate), scene_threshold, max_segment_s

    # --- the composed providers ------------------------------------------------------------------------
    @staticmethod
    def _resolve(ref: str | EmbeddingProvider) -> EmbeddingProvider:
        if isinstance(ref, EmbeddingProvider):
            return ref
        from aios_memory.plugins import get_provider

        return get_provider(ref)

    @property
    def clip(self) -> EmbeddingProvider:
        """The image provider that embeds frames (registry name ``clip-vit-b-32`` unless given)."""
        return self._resolve(self._clip_ref)

    @property
    def whisper(self) -> EmbeddingProvider:
        """The audio provider that transcribes each segment's audio."""
        return self._resolve(self._whisper_ref)

    def is_installed(self) -> bool:
        import importlib.util

        return (
            importlib.util.find_spec("av") is not None
            and self.clip.is_installed()
            and self.whisper.is_installed()
        )

    def _load(self) -> None:
        from aios_memory.video_input import require_av

        require_av()
        for p, how in ((self.clip, "clip"), (self.whisper, "whisper")):
            if not p.is_installed():
                raise ModelNotInstalledError(
                    f"video memories need the {p.name} model ({p.modality} provider), which is not "
                    f"installed: run `aios-memory models install {how}`"
                )

    def fingerprint(self) -> dict[str, Any]:
        """The base fingerprint plus the identity of the two composed models and the sampling settings."""
        fp = super().fingerprint()
        clip, whisper = self.clip.fingerprint(), self.whisper.fingerprint()
        fp["weights"] = (
            f"{clip.get('provider')}:{clip.get('weights')}+{whisper.get('provider')}:{whisper.get('weights')}"
        )
        fp["sampling"] = f"{self.rate}/s scene>{self.scene_threshold} max {self.max_segment_s}s"
        return fp

    def info(self) -> dict[str, Any]:
        return {**super().info(), "frames": self.clip.name, "audio": self.whisper.name}

    # --- rows ------------------------------------------------------------------------------------------
    def expand(self, item: Any) -> list[tuple[Any, dict[str, Any]]]:
        """One row per segment: ``[(Segment, {"start_s", "end_s", "thumbnail"}), ...]``."""
        from aios_memory_video.decode import Segment, decode, segments, thumbnail

        if isinstance(item, Segment):
            return [(item, {"start_s": item.start_s, "end_s": item.end_s})]
        data = item.read_bytes() if hasattr(item, "read_bytes") else bytes(item)
        decoded = decode(data, self.rate, self.scene_threshold)
        return [
            (s, {"start_s": s.start_s, "end_s": s.end_s, "thumbnail": thumbnail(s.frames[s.representative])})
            for s in segments(decoded, self.max_segment_s)
        ]

    def _segments(self, items: list[Any]) -> list[Any]:
        from aios_memory_video.decode import Segment

        out = []
        for item in items:
            if isinstance(item, Segment):
                out.append(item)
            else:  # a whole video: all its segments pooled into one vector (a video query)
                segs = [s for s, _ in self.expand(item)]
                frames = [f for s in segs for f in s.frames]
                times = [t for s in segs for t in s.times]
                audio = [s.audio for s in segs if s.audio is not None]
                whole = Segment(segs[0].start_s, segs[-1].end_s, frames, times)
                whole.audio = np.concatenate(audio) if audio else None
                out.append(whole)
        return out

    def preprocess(self, items: list[Any]) -> _Batch:
        """CPU work in the import's workers: CLIP's pixels of every frame, Whisper's log-mels."""
        from aios_memory_video.decode import AUDIO_RATE

        segs = self._segments(items)
        frames, spans = [], []
        for s in segs:
            spans.append((len(frames), len(frames) + len(s.frames), len(frames) + s.representative))
            frames.extend(s.frames)
        clip, whisper = self.clip, self.whisper
        has_audio = [i for i, s in enumerate(segs) if s.audio is not None and len(s.audio)]
        audio = (
            whisper.preprocess_batch([(segs[i].audio, AUDIO_RATE) for i in has_audio]) if has_audio else None
        )
        return _Batch(clip.preprocess_batch(frames), spans, audio, has_audio)

    def forward(self, batch: _Batch) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Frames through CLIP (pooled per segment), audio through Whisper (transcripts)."""
        n_frames = batch.spans[-1][1] if batch.spans else 0
        vecs, _ = self.clip.embed_preprocessed(batch.pixels, n_frames)
        out = np.stack([vecs[a:b].mean(axis=0) for a, b, _ in batch.spans])
        transcripts: list[str | None] = [None] * len(batch.spans)
        if batch.has_audio:
            _, cols = self.whisper.embed_preprocessed(batch.audio, len(batch.has_audio))
            for i, c in zip(batch.has_audio, cols, strict=True):
                transcripts[i] = c.get("transcript") or None
        columns = [
            {"frame_embedding": vecs[r], "transcript": t}
            for (_, _, r), t in zip(batch.spans, transcripts, strict=True)
        ]
        return out, columns

    def _embed_with_columns(self, items: list[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        return self.forward(self.preprocess(items))

    def _embed(self, items: list[Any]) -> np.ndarray:
        return self._embed_with_columns(items)[0]

    def _embed_query(self, items: list[Any], modality: str) -> np.ndarray:
        """An image query's CLIP vector, or a text query's through CLIP's text tower: both in the space of
        the segments' pooled frame vectors."""
        if modality == "text":
            return np.stack([self.clip.embed_query(t, "text") for t in items])
        return self.clip.embed_batch(items)

    def frame_query(self, text: str) -> np.ndarray:
        """A text query for frames (CLIP's text tower): pass it as ``search(vector=...)`` to rank
        segments by what they show rather than by what is said in them."""
        return self.clip.embed_query(text, "text")

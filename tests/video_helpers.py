"""Real test videos, encoded with PyAV: scikit-image photographs cut into scenes, with espeak-ng speech.

Each scene shows one photograph (shifted a pixel per frame, so frames differ as in real footage) while
one sentence is spoken; ``make_video`` returns the times it encoded, for the tests to compare.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

PHOTOS = ["chelsea", "coffee", "rocket"]
SENTENCES = ["the train is late today", "my cat sleeps on the red chair", "please open the kitchen window"]
W, H = 96, 64
AUDIO_RATE = 16_000


def photo(name: str) -> np.ndarray:
    from PIL import Image
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.asarray(Image.fromarray(img[..., :3]).resize((W + 8, H)))


def speech(sentence: str) -> np.ndarray:
    """``sentence`` spoken by espeak-ng, 16 kHz mono float32."""
    import soundfile

    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "150", sentence], capture_output=True, check=True)
    samples, sr = soundfile.read(io.BytesIO(wav.stdout), dtype="float32")
    import av

    frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
    frame.sample_rate = sr
    rs = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    out = [f.to_ndarray().reshape(-1) for f in [*rs.resample(frame), *rs.resample(None)]]
    return np.concatenate(out)


@dataclass
class Encoded:
    path: Path
    frame_times: list[float] = field(default_factory=list)  # every encoded frame's time
    scene_starts: list[float] = field(default_factory=list)
    end_s: float = 0.0
    sentences: list[str] = field(default_factory=list)


def make_video(
    path: Path,
    vcodec: str | None = "libx264",
    acodec: str | None = "aac",
    fps: int = 10,
    scene_s: float = 2.5,
    vfr: bool = False,
    photos: list[str] = PHOTOS,
    sentences: list[str] = SENTENCES,
) -> Encoded:
    """Encode one scene per photo (``scene_s`` seconds, sentence spoken from 0.3 s into it). ``vfr``: frame
    intervals alternate 50/150 ms (a variable frame rate). ``vcodec=None``: audio only; ``acodec=None``:
    no audio track."""
    import av

    enc = Encoded(path, sentences=list(sentences[: len(photos)]))
    out = av.open(str(path), "w")
    vs = None
    if vcodec is not None:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
    aus = None
    if acodec is not None:
        arate = 48_000 if acodec == "libopus" else AUDIO_RATE
        aus = out.add_stream(acodec, rate=arate)
        aus.layout = "mono"
    t_ms, scene_ms, i = 0, int(scene_s * 1000), 0
    if vs is not None:
        for s, name in enumerate(photos):
            img = photo(name)
            enc.scene_starts.append(t_ms / 1000)
            while t_ms < (s + 1) * scene_ms:
                shift = (0, 1, 2, 3, 2, 1)[i % 6]  # a slow pan back and forth
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(img[:, shift : shift + W]), format="rgb24"
                )
                frame.pts, frame.time_base = t_ms, Fraction(1, 1000)
                enc.frame_times.append(t_ms / 1000)
                for p in vs.encode(frame):
                    out.mux(p)
                t_ms += (50 if i % 2 == 0 else 150) if vfr else 1000 // fps
                i += 1
        for p in vs.encode(None):
            out.mux(p)
    enc.end_s = len(photos) * scene_s
    if aus is not None:
        track = np.zeros(int(enc.end_s * AUDIO_RATE), np.float32)
        for s, sentence in enumerate(enc.sentences):
            voice = speech(sentence)[: int((scene_s - 0.4) * AUDIO_RATE)]
            at = int((s * scene_s + 0.3) * AUDIO_RATE)
            track[at : at + len(voice)] = voice
        frame = av.AudioFrame.from_ndarray(track[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, 0, Fraction(1, AUDIO_RATE)
        for p in aus.encode(frame):
            out.mux(p)
        for p in aus.encode(None):
            out.mux(p)
    out.close()
    return enc

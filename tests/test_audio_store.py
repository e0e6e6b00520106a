"""Audio memories in the store with the real Whisper weights: transcripts make audio searchable by text."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import run_cli

from aios_memory import MemoryStore

ALSA = Path("/usr/share/sounds/alsa")
CLIPS = [
    "Front_Center",
    "Front_Left",
    "Front_Right",
    "Rear_Center",
    "Rear_Left",
    "Rear_Right",
    "Side_Left",
    "Side_Right",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ALSA / "Front_Center.wav").exists(),
        reason="alsa-utils is not installed: apt-get install alsa-utils",
    ),
]


@pytest.fixture(scope="module")
def audio_store(model_home, tmp_path_factory):
    from aios_memory.plugins import get_provider

    get_provider("whisper-base").install()
    store = MemoryStore(tmp_path_factory.mktemp("audio") / "store")
    ids = store.add_many([ALSA / f"{c}.wav" for c in CLIPS], namespace="sounds")
    assert len(ids) == len(CLIPS)
    return store


def _name(memory) -> str:
    return memory.source.rsplit("/", 1)[-1].removesuffix(".wav")


def test_every_clip_has_its_transcript(audio_store):
    rows = audio_store.sql("SELECT source, transcript, start_s, end_s FROM audio_memories").to_pylist()
    got = {r["source"].rsplit("/", 1)[-1]: r for r in rows}
    for clip in CLIPS:
        words = "".join(
            ch for ch in got[f"{clip}.wav"]["transcript"].lower() if ch.isalpha() or ch == " "
        ).split()
        assert words == clip.lower().split("_"), got[f"{clip}.wav"]["transcript"]
        assert got[f"{clip}.wav"]["start_s"] == 0.0 and 1.0 < got[f"{clip}.wav"]["end_s"] < 2.0


@pytest.mark.parametrize("clip", CLIPS)
def test_text_query_ranks_the_right_clip_first(audio_store, clip):
    query = clip.replace("_", " ").lower()  # "rear left"
    hits = audio_store.search(query, k=3, modality="audio")
    assert _name(hits[0]) == clip, [(_name(h), h.score, h.extra["transcript"]) for h in hits]
    assert hits[0].extra["transcript"] and hits[0].score > hits[1].score


def test_audio_query_finds_the_same_clip(audio_store):
    hits = audio_store.search(ALSA / "Rear_Left.wav", k=2)  # audio -> audio through Whisper's encoder vectors
    assert _name(hits[0]) == "Rear_Left" and hits[0].score > 0.9999


def test_sql_over_transcripts(audio_store):
    rows = audio_store.sql(
        "SELECT source, transcript FROM audio_memories "
        "ORDER BY array_cosine_similarity(transcript_embedding, embed_text(?)) DESC LIMIT 1",
        ["rear right"],
    ).to_pylist()
    assert rows[0]["source"].endswith("Rear_Right.wav")


def test_long_audio_becomes_one_row_per_window(model_home, tmp_path):
    from aios_memory.plugins import get_provider

    get_provider("whisper-base").install()
    sr = 16000
    clip, clip_sr = soundfile.read(ALSA / "Front_Left.wav", dtype="float32")
    import librosa

    clip = librosa.resample(clip, orig_sr=clip_sr, target_sr=sr)
    samples = np.zeros(70 * sr, dtype=np.float32)
    for start_s in (5, 40):  # a voice in the first and second windows, silence in the third
        samples[start_s * sr : start_s * sr + len(clip)] = clip
    buf = io.BytesIO()
    soundfile.write(buf, samples, sr, format="WAV")
    store = MemoryStore(tmp_path / "store")
    ids = store.add_many([buf.getvalue()])
    rows = store.sql("SELECT id, start_s, end_s, transcript FROM audio_memories ORDER BY start_s").to_pylist()
    assert [r["id"] for r in rows] == ids  # add_many returns an item's window ids in window order
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 70.0)]
    assert "left" in rows[0]["transcript"].lower() and "left" in rows[1]["transcript"].lower()
    assert rows[2]["transcript"] == ""  # digital silence: no hallucinated words
    nulls = store.sql("SELECT count(*) AS n FROM audio_memories WHERE transcript_embedding IS NULL").column(
        "n"
    )
    assert nulls[0].as_py() == 1  # and nothing for a text query to find
    hit = store.search("front left", k=1, modality="audio")[0]
    assert hit.extra["start_s"] in (0.0, 30.0)


def test_cli_search_shows_transcripts(audio_store):
    out = run_cli(
        "--store", str(audio_store.path), "search", "rear left", "--modality", "audio", "-k", "1"
    ).stdout
    assert "rear, left" in out.lower() and re.search(r"\[0\.0-1\.\ds\]", out)  # transcript and window shown
    hits = json.loads(
        run_cli(
            "--store",
            str(audio_store.path),
            "search",
            "rear left",
            "--modality",
            "audio",
            "-k",
            "1",
            "--json",
        ).stdout
    )
    assert hits[0]["source"].endswith("Rear_Left.wav") and hits[0]["transcript"]

"""Video memories (plugins/aios_memory_video) on real files encoded here with PyAV: scikit-image photographs
cut into scenes, espeak-ng sentences, in MP4/H.264, WebM/VP9, MKV/MPEG-4, a variable frame-rate MP4, one
without audio, one without video and a truncated one. CLIP has seeded weights (compared with transformers'
CLIPModel on the same decoded frames); Whisper base and MiniLM are the real models."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from video_helpers import PHOTOS, SENTENCES, Encoded, make_video

from aios_memory import MemoryStore, video_input
from aios_memory import modality as modality_mod
from aios_memory.errors import (
    InputTooLargeError,
    InvalidInputError,
    ModelNotInstalledError,
    UnsupportedMediaError,
)

pytest.importorskip("av", reason="the test extra installs av (PyAV)")
REPO = Path(__file__).resolve().parent.parent
FPS = 10
FILES = {  # name: (video codec, audio codec, variable frame rate)
    "h264.mp4": ("libx264", "aac", False),
    "vp9.webm": ("libvpx-vp9", "libopus", False),
    "mpeg4.mkv": ("mpeg4", "aac", False),
    "vfr.mp4": ("libx264", "aac", True),
    "silent.mp4": ("libx264", None, False),
}


def video_plugin():
    """The bundled plugin, registered as its entry point does (an older editable install may predate it)."""
    from aios_memory.plugins import get_providers, register_plugin

    if "clip-whisper-video" not in get_providers():
        if str(REPO / "plugins") not in sys.path:
            sys.path.insert(0, str(REPO / "plugins"))
        import aios_memory_video

        register_plugin(aios_memory_video)


@pytest.fixture(scope="module")
def env(model_home, tmp_path_factory):
    """Encoded videos, the seeded CLIP (and its transformers reference), Whisper installed, the video
    provider composing them."""
    from aios_memory_clip.provider import ClipProvider
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder

    from aios_memory.plugins import get_provider

    root = tmp_path_factory.mktemp("video")
    reference = make_clip_folder(root / "hf", TINY, seed=5)
    clip = ClipProvider(convert_clip(root / "hf", root / "clip").parent)
    get_provider("whisper-base").install()
    video_plugin()
    provider = get_provider("clip-whisper-video")
    before = provider._clip_ref
    provider._clip_ref = clip  # the registered provider composes the seeded CLIP in this module
    files = {name: make_video(root / name, v, a, fps=FPS, vfr=vfr) for name, (v, a, vfr) in FILES.items()}
    files["audio-only.mp4"] = make_video(root / "audio-only.mp4", None, "aac")
    whole = (root / "h264.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) * 2 // 3])
    yield {"root": root, "files": files, "provider": provider, "clip": clip, "reference": reference}
    provider._clip_ref = before


@pytest.fixture(scope="module")
def stored(env, tmp_path_factory):
    store = MemoryStore(tmp_path_factory.mktemp("video-store") / "store")
    store.add(env["files"]["h264.mp4"].path)
    return store


def test_video_is_sniffed_from_its_bytes(env):
    mimes = {
        "h264.mp4": "video/mp4",
        "vp9.webm": "video/webm",
        "mpeg4.mkv": "video/x-matroska",
        "vfr.mp4": "video/mp4",
    }
    for name, mime in mimes.items():
        assert modality_mod.sniff((env["root"] / name).read_bytes()) == ("video", mime)
    item = modality_mod.prepare(env["root"] / "vp9.webm")
    assert item.modality == "video" and item.media_type == "video/webm"
    assert modality_mod.sniff(b"\x00\x00\x00\x20ftypM4A \x00\x00") == ("audio", "audio/mp4")  # still audio


@pytest.mark.parametrize("name", list(FILES))
def test_frame_times_and_segments_are_the_encoded_ones(env, name):
    from aios_memory_video.decode import decode

    enc: Encoded = env["files"][name]
    got = decode(enc.path.read_bytes())
    frame = 1 / FPS
    assert len(got.frame_times) == len(enc.frame_times)
    assert np.abs(np.array(got.frame_times) - enc.frame_times).max() <= frame
    assert len(got.scene_starts) == len(enc.scene_starts)
    assert np.abs(np.array(got.scene_starts) - enc.scene_starts).max() <= frame
    rows = env["provider"].expand(enc.path.read_bytes())
    starts = [c["start_s"] for _, c in rows]
    ends = [c["end_s"] for _, c in rows]
    assert np.abs(np.array(starts) - enc.scene_starts).max() <= frame
    assert np.abs(np.array(ends) - [*enc.scene_starts[1:], enc.end_s]).max() <= frame
    assert all(c["thumbnail"][:3] == b"\xff\xd8\xff" for _, c in rows)  # JPEG
    for seg, _ in rows:  # 1 frame per second plus each scene's first
        assert all(seg.start_s <= t < seg.end_s for t in seg.times)
        assert len(seg.times) == pytest.approx(seg.end_s - seg.start_s, abs=1)
        if name == "silent.mp4":
            assert seg.audio is None
        else:
            assert len(seg.audio) == pytest.approx((seg.end_s - seg.start_s) * 16000, abs=1600)


def test_long_segments_are_cut(env):
    from aios_memory_video.decode import decode, segments

    got = segments(decode(env["files"]["h264.mp4"].path.read_bytes()), max_segment_s=1.0)
    assert [round(s.start_s, 3) for s in got] == [0.0, 1.0, 2.0, 2.5, 3.5, 4.5, 5.0, 6.0, 7.0]


def test_frame_embeddings_equal_transformers_clip(env):
    """Each segment's representative frame and its pooled frames, against transformers' CLIPModel on the
    same decoded frames."""
    from PIL import Image
    from test_clip_model import reference_outputs

    provider, model = env["provider"], env["reference"]
    rows = provider.expand(env["files"]["vp9.webm"].path.read_bytes())
    vecs, cols = provider.embed_with_columns([seg for seg, _ in rows])
    worst = 1.0
    for (seg, _), vec, col in zip(rows, vecs, cols, strict=True):
        frames = []
        for f in seg.frames:  # the decoded frames, losslessly as PNG for transformers' image processor
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="PNG")
            frames.append(buf.getvalue())
        ref = reference_outputs(model, env["root"] / "hf", frames, ["a frame"])["image"]
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        frame = np.asarray(col["frame_embedding"], np.float32)
        pooled = ref.mean(axis=0) / np.linalg.norm(ref.mean(axis=0))
        cos = [float(frame @ ref[seg.representative]) / float(np.linalg.norm(frame)), float(vec @ pooled)]
        worst = min(worst, *cos)
    print(f"\nvideo frames vs transformers CLIP: min cosine {worst:.8f}")
    assert worst >= 0.99999


def test_store_rows_and_transcripts(env, stored):
    import jiwer

    enc = env["files"]["h264.mp4"]
    rows = sorted(
        stored.sql("SELECT start_s, end_s, transcript, thumbnail FROM video_memories").to_pylist(),
        key=lambda r: r["start_s"],
    )
    assert [round(r["start_s"], 2) for r in rows] == enc.scene_starts
    assert abs(rows[-1]["end_s"] - enc.end_s) <= 1 / FPS
    norm = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
    )
    hyps = [norm(r["transcript"] or "") for r in rows]
    wer = jiwer.wer(SENTENCES, hyps)
    print(f"\nvideo transcripts: WER {wer:.3f}: {hyps}")
    for r in rows:
        assert r["thumbnail"][:3] == b"\xff\xd8\xff"
    assert wer <= 0.35
    assert [w for w in hyps[1].split() if w in {"cat", "red", "chair"}] == ["cat", "red", "chair"]


def test_a_spoken_sentence_finds_its_segment_first(env, stored):
    enc = env["files"]["h264.mp4"]
    for sentence, start in zip(SENTENCES, enc.scene_starts, strict=True):
        hits = stored.search(sentence, modality="video", k=3)
        assert hits[0].extra["start_s"] == pytest.approx(start, abs=1 / FPS), sentence
        assert hits[0].extra["end_s"] > hits[0].extra["start_s"]
    hit = stored.search("the man says the train is late", modality="video", k=1)[0]
    assert hit.extra["start_s"] == pytest.approx(0.0) and "train" in hit.extra["transcript"].lower()


def test_image_and_frame_queries(env, stored):
    from PIL import Image
    from video_helpers import photo

    provider = env["provider"]
    for scene, name in enumerate(PHOTOS):
        img = photo(name)
        buf = io.BytesIO()
        Image.fromarray(img[:, :96]).save(buf, format="PNG")
        hit = stored.search(buf.getvalue(), modality="video", k=1)[0]
        assert hit.extra["start_s"] == pytest.approx(env["files"]["h264.mp4"].scene_starts[scene], abs=0.1)
    query = provider.frame_query("a photo of a rocket")
    assert np.allclose(query, env["clip"].encode_text("a photo of a rocket")[0], atol=1e-6)
    hits = stored.search(vector=query, modality="video", k=3)
    rows = stored.sql("SELECT id, embedding FROM video_memories").to_pylist()
    expected = sorted(rows, key=lambda r: -float(np.dot(r["embedding"], query)))
    assert [h.id for h in hits] == [r["id"] for r in expected]
    assert all(h.extra["end_s"] > h.extra["start_s"] for h in hits)
    # the same text through search(): CLIP's text tower ranks the frames, fused with the transcripts
    found = stored.search("a photo of a rocket", modality="video", k=len(rows))
    frames = {h.id: s for h in found for s in h.extra["signals"] if s["signal"] == "embedding"}
    assert frames and {s["signal"] for h in found for s in h.extra["signals"]} == {
        "embedding",
        "transcript_embedding",
    }
    vectors = {r["id"]: r["embedding"] for r in rows}
    for id_, sig in frames.items():  # the exact cosine of the frames to CLIP's text vector
        assert sig["score"] == pytest.approx(float(np.dot(vectors[id_], query)), abs=1e-5)


@pytest.mark.parametrize(
    ("name", "error"),
    [("truncated.mp4", InvalidInputError), ("audio-only.mp4", UnsupportedMediaError)],
)
def test_bad_files_are_typed_errors_and_change_nothing(env, tmp_path, name, error):
    store = MemoryStore(tmp_path / "store")
    store.add("a note")
    before = store.stats()
    with pytest.raises(error):
        store.add(env["root"] / name)
    with pytest.raises(error):
        store.add((env["root"] / name).read_bytes())
    assert store.stats() == before


@pytest.mark.parametrize(
    ("limit", "value", "says"),
    [
        ("MAX_VIDEO_SECONDS", 5, r"7\.\d s long"),
        ("MAX_VIDEO_PIXELS", 96 * 63, "96x64"),
        ("MAX_VIDEO_FRAMES", 50, "75 frames"),
    ],
)
def test_limits_from_the_header(env, tmp_path, monkeypatch, limit, value, says):
    monkeypatch.setattr(video_input, limit, value)
    store = MemoryStore(tmp_path / "store")
    store.add("a note")
    before = store.stats()
    with pytest.raises(InputTooLargeError, match=says):
        store.add(env["files"]["h264.mp4"].path)
    assert store.stats() == before


def test_without_clip_weights_one_clear_message(env, tmp_path):
    from aios_memory_clip.provider import ClipProvider

    provider = env["provider"]
    store = MemoryStore(tmp_path / "store")
    store.add("a note")
    before = store.stats()
    provider._clip_ref, saved = ClipProvider(tmp_path / "no-clip"), provider._clip_ref
    try:
        provider.unload()
        with pytest.raises(ModelNotInstalledError, match="aios-memory models install clip"):
            store.add(env["files"]["h264.mp4"].path)
    finally:
        provider._clip_ref = saved
        provider.unload()
    assert store.stats() == before


def test_without_pyav_one_clear_message(env, tmp_path):
    """A real process where ``import av`` fails: video names what to install, text still works."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["av"] = None  # PyAV not installed
        from pathlib import Path
        from aios_memory import MemoryStore
        from aios_memory.errors import UnsupportedMediaError
        s = MemoryStore({str(tmp_path / "store")!r})
        s.add("text still works")
        try:
            s.add(Path({str(env["files"]["h264.mp4"].path)!r}))
        except UnsupportedMediaError as exc:
            print("ERROR", exc)
        print("TEXT", s.stats()["tables"]["text"]["memories"], "video" in s.stats()["tables"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert "pip install 'aios-memory[video]'" in out.stdout
    assert "TEXT 1 False" in out.stdout


def test_the_page_serves_segments_thumbnails_and_the_video_from_the_moment(env, stored, tmp_path):
    """`aios-memory ui` (a real process) lists the video table's segments with their times, serves each
    segment's JPEG frame as its thumbnail and the video with byte ranges; a card plays from the segment."""
    from ui_helpers import call, get_json, start_ui, stop_ui

    from aios_memory.ui.render import card

    rows = stored.sql("SELECT id, start_s, end_s, thumbnail, media FROM video_memories ORDER BY start_s")
    rows = rows.to_pylist()
    proc, log, url, port, token = start_ui(stored.path, dict(os.environ), tmp_path / "ui.log")
    server = {"url": url, "port": port, "token": token}
    try:
        status, page = get_json(server, "/api/memories?modality=video&limit=100")
        assert status == 200 and page["total"] == len(rows)
        listed = {m["id"]: m for m in page["memories"]}
        for r in rows:
            m = listed[r["id"]]
            assert (m["start_s"], m["end_s"]) == (r["start_s"], r["end_s"])
            assert "thumbnail" not in m and "frame_embedding" not in m  # bytes and vectors stay out
        first = rows[0]
        status, headers, body = call(server, "GET", f"/api/thumb/{first['id']}")
        assert status == 200 and headers["content-type"] == "image/jpeg" and body == first["thumbnail"]
        status, headers, body = call(
            server, "GET", f"/api/media/{first['id']}", headers={"Range": "bytes=0-99"}
        )
        assert status == 206 and headers["content-type"] == "video/mp4" and body == first["media"][:100]
        status, _, html = call(server, "GET", "/")
        assert status == 200 and b'data-modality="video"' in html
    finally:
        stop_ui(proc, log)
    drawn = card({**listed[first["id"]], "modality": "video"})
    assert (
        f"#t={first['start_s']},{first['end_s']}" in drawn and f'poster="/api/thumb/{first["id"]}"' in drawn
    )

"""One search across tables and signals (aios_memory/fusion.py), with the real MiniLM, the real Whisper on
real speech (ALSA's voice clips) and a seeded CLIP: hybrid recall on codes, names and paraphrases, the
cross-table default finding each target first, and the CLI, MCP and page returning the same list."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_clip_model import TINY, make_clip_folder, real_images
from ui_helpers import ALSA, post_json, start_ui, stop_ui

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError

# (memory, query, kind): a code or name the query repeats exactly, or a paraphrase sharing no content word
RECALL = [
    ("The gate code for the storage unit is 4471", "gate 4471", "code"),
    ("The side gate code is 9183", "gate 9183", "code"),
    ("Wi-Fi password for the cabin: orange-kite-72", "orange-kite-72", "code"),
    ("The wifi password at the office is blue-heron-19", "blue-heron-19", "code"),
    ("Locker number 318 holds the spare laptop", "locker 318", "code"),
    ("Locker number 812 holds the winter tyres", "locker 812", "code"),
    ("Invoice INV-20931 was paid on Monday", "INV-20931", "code"),
    ("Invoice INV-20913 is still unpaid", "INV-20913", "code"),
    ("Our plumber is called Tomasz Wieczorek", "Wieczorek", "name"),
    ("The project sponsor is Adaeze Okonkwo", "Okonkwo", "name"),
    ("The user is afraid of flying on aeroplanes", "fear of air travel", "paraphrase"),
    ("She cannot eat anything containing peanuts", "nut allergy", "paraphrase"),
    ("He goes running every morning before work", "daily jog at dawn", "paraphrase"),
    ("The kids love building sandcastles at the seaside", "children playing on the beach", "paraphrase"),
    ("My car broke down on the motorway", "vehicle failure on the highway", "paraphrase"),
    ("The doctor told me to drink more water", "physician advice about hydration", "paraphrase"),
]


def recall_at_1(store: MemoryStore, ids: list[str], mode: str, kind: str) -> float:
    rows = [(i, q) for i, (_, q, k) in zip(ids, RECALL, strict=True) if k == kind]
    hits = [(store.search(q, k=1, mode=mode) or [None])[0] for _, q in rows]
    return sum(h is not None and h.id == i for h, (i, _) in zip(hits, rows, strict=True)) / len(rows)


def test_hybrid_beats_vector_on_codes_and_keyword_on_paraphrases(store):
    ids = store.add_many([m for m, _, _ in RECALL])
    got = {
        (mode, kind): recall_at_1(store, ids, mode, kind)
        for mode in ("vector", "hybrid", "keyword")
        for kind in ("code", "name", "paraphrase")
    }
    print("\nrecall@1 " + "  ".join(f"{m}/{k}={v:.2f}" for (m, k), v in got.items()))
    assert got["hybrid", "code"] > got["vector", "code"]
    assert got["hybrid", "paraphrase"] > got["keyword", "paraphrase"]
    assert got["hybrid", "code"] == 1.0 and got["hybrid", "name"] == 1.0
    assert got["hybrid", "paraphrase"] >= got["vector", "paraphrase"] - 1 / 6


def test_one_signal_is_the_single_table_search(store):
    """A text-only store in vector mode: nothing to fuse, exact cosines, as with modality='text'."""
    store.add_many([m for m, _, _ in RECALL])
    plain = store.search("a fear of flying", k=5, modality="text")
    default = store.search("a fear of flying", k=5)
    assert [(m.id, m.score) for m in default] == [(m.id, m.score) for m in plain]
    assert "signals" not in default[0].extra and default[0].score < 1.0
    hybrid = store.search("a fear of flying", k=5, mode="hybrid")
    sig = {s["signal"]: s for s in hybrid[0].extra["signals"]}
    assert sig["embedding"]["score"] == pytest.approx(plain[0].score, abs=1e-12)  # the exact cosine, kept
    plan = store.explain_search("a fear of flying", k=5, mode="hybrid")
    assert plan["path"] == "fused" and plan["manifest_reads"] == 1  # one version for every signal
    with pytest.raises(InvalidInputError, match="needs a text query"):
        store.search(real_images()["chelsea"], mode="keyword")


# --- text, images (seeded CLIP), audio (real speech, real Whisper) in one store -------------------------
NOTES = [
    "Flight to Tokyo on April 3",
    "The gate code for the storage unit is 4471",
    "The left rear loudspeaker in the living room crackles",
    "Buy oat milk and coffee beans on the way home",
]
CLIPS = ["Front_Center", "Rear_Left", "Side_Right"]
PHOTOS = ["chelsea", "coffee", "rocket"]


@pytest.fixture(scope="module")
def mixed(model_home, tmp_path_factory):
    from aios_memory_converters.clip import convert_clip

    from aios_memory.plugins import get_provider

    if not (ALSA / "Front_Center.wav").exists():
        pytest.skip("alsa-utils is not installed: apt-get install alsa-utils")
    get_provider("whisper-base").install()
    root = tmp_path_factory.mktemp("fusion")
    home = root / "home"
    for model in ("text", "whisper"):
        shutil.copytree(model_home / "models" / model, home / "models" / model)
    make_clip_folder(root / "hf", TINY, seed=7)
    convert_clip(root / "hf", home / "models" / "clip")
    images = real_images()
    for name in PHOTOS:
        (root / f"{name}.png").write_bytes(images[name])
    env = {"AIOS_MEMORY_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom aios_memory import MemoryStore\n"
        "root, notes, clips, photos = Path(sys.argv[1]), *map(json.loads, sys.argv[2:5])\n"
        "s = MemoryStore(root / 'store')\n"
        "ids = {'text': s.add_many(notes), 'image': s.add_many([root / f'{p}.png' for p in photos]),\n"
        "       'audio': s.add_many([Path(c) for c in clips], namespace='sounds')}\n"
        "print(json.dumps(ids))\n"
    )
    clips = [str(ALSA / f"{c}.wav") for c in CLIPS]
    args = [str(root), json.dumps(NOTES), json.dumps(clips), json.dumps(PHOTOS)]
    full = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", script, *args], env=full, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "root": root,
        "env": full,
        "store": root / "store",
        "ids": json.loads(proc.stdout.splitlines()[-1]),
    }


# query -> (table, index of the target in that table's list)
TARGETS = {
    "front center": ("audio", 0),
    "rear left": ("audio", 1),
    "side right": ("audio", 2),
    "flight to Tokyo": ("text", 0),
    "gate code 4471": ("text", 1),
    "the loudspeaker crackles": ("text", 2),
    "oat milk": ("text", 3),
}


def _in_store(mixed, body: str) -> object:
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom aios_memory import MemoryStore\n"
        f"s = MemoryStore({str(mixed['store'])!r})\n{body}"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=mixed["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_default_search_finds_each_target_first_whatever_its_table(mixed):
    got = _in_store(
        mixed,
        f"out = {{}}\nfor q in {list(TARGETS)!r}:\n"
        "    for mode in ('vector', 'hybrid'):\n"
        "        hits = s.search(q, k=3, mode=mode)\n"
        "        out[q + '|' + mode] = [(h.id, h.modality, h.score, h.extra.get('signals')) for h in hits]\n"
        "plan = s.explain_search('front center', k=3)\n"
        "out['plan'] = [(p['table'], p['signal']) for p in plan['signals']]\n"
        f"img = s.search(Path({str(mixed['root'] / 'coffee.png')!r}), k=2)\n"
        "out['image'] = [(h.id, h.score) for h in img]\n"
        "print(json.dumps(out))",
    )
    assert got["plan"] == [["text", "embedding"], ["image", "embedding"], ["audio", "transcript_embedding"]]
    for q, (table, i) in TARGETS.items():
        for mode in ("vector", "hybrid"):
            hits = got[f"{q}|{mode}"]
            assert hits[0][0] == mixed["ids"][table][i], (q, mode, hits)
            assert hits[0][1] == table and hits[0][3][0]["table"] == table
            assert [h[2] for h in hits] == sorted((h[2] for h in hits), reverse=True)
    # an image query reaches the image table alone: nothing fused, the exact cosine
    assert got["image"][0][0] == mixed["ids"]["image"][1] and got["image"][0][1] > 0.9999


def test_cli_mcp_and_page_return_the_same_list(mixed, tmp_path):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    query, k = "rear left", 4
    want = _in_store(mixed, f"print(json.dumps([h.id for h in s.search({query!r}, k={k})]))")
    cli = json.loads(
        run_cli(
            "--store", str(mixed["store"]), "search", query, "-k", str(k), "--json", env=mixed["env"]
        ).stdout
    )
    assert [r["id"] for r in cli] == want and {"table", "signal"} <= set(cli[0]["signals"][0])

    async def recall() -> list[str]:
        args = ["-m", "aios_memory", "serve", "--standalone", "--store", str(mixed["store"])]
        params = StdioServerParameters(command=sys.executable, args=args, env=mixed["env"])
        with (tmp_path / "mcp.log").open("w") as err:
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=120) as session:
                    await session.initialize()
                    result = await session.call_tool("recall", {"query": query, "k": k})
                    assert not result.is_error, result.content[0].text
                    out = result.structured_content["memories"]
                    assert out[0]["signals"][0]["table"] == "audio"
                    return [m["id"] for m in out]

    assert asyncio.run(recall()) == want
    proc, log, url, port, token = start_ui(mixed["store"], mixed["env"], tmp_path / "ui.log")
    try:
        status, body = post_json(
            {"url": url, "port": port, "token": token}, "/api/search", {"query": query, "k": k}
        )
    finally:
        stop_ui(proc, log)
    assert status == 200 and [r["id"] for r in body["results"]] == want
    assert body["searched"] == ["text", "image", "audio"]
    scores = [r["score"] for r in body["results"]]
    assert np.all(np.diff(scores) <= 0)


def test_text_plus_image_query_fuses_both_parts(mixed):
    coffee = str(mixed["root"] / "coffee.png")
    got = _in_store(
        mixed,
        f"hits = s.search(text='a photograph', image=Path({coffee!r}), k=3)\n"
        "plan = s.explain_search(text='a photograph', image=Path(" + repr(coffee) + "), k=3)\n"
        "print(json.dumps({'hits': [(h.id, h.score, h.extra['signals']) for h in hits],\n"
        "                  'plan': [(p['query'], p['table'], p['signal']) for p in plan['signals']]}))",
    )
    assert got["plan"] == [
        ["text", "text", "embedding"],
        ["text", "image", "embedding"],
        ["text", "audio", "transcript_embedding"],
        ["image", "image", "embedding"],
    ]
    top_id, top_score, signals = got["hits"][0]
    assert top_id == mixed["ids"]["image"][1]  # the photo given ranks first
    by_query = {s["query"]: s for s in signals}
    assert set(by_query) == {"text", "image"} and by_query["image"]["score"] > 0.9999
    expected = (by_query["image"]["calibrated"] + by_query["text"]["calibrated"]) / 2
    assert top_score == pytest.approx(expected, abs=1e-12)


def test_composite_query_refusals(store):
    store.add("a note")
    with pytest.raises(InvalidInputError, match="not both"):
        store.search("a note", text="a note")
    with pytest.raises(InvalidInputError, match="image= takes an image"):
        store.search(text="a note", image="not an image")
    with pytest.raises(InvalidInputError, match="text= takes text"):
        store.search(text=real_images()["chelsea"], image=real_images()["coffee"])


def test_video_segments_join_the_default_search(mixed, tmp_path):
    """A video table (the bundled plugin: CLIP frames, Whisper transcripts) is one more table of signals:
    a spoken sentence finds its segment first, with its times, among text, images and audio."""
    pytest.importorskip("av")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: apt-get install espeak-ng")
    from video_helpers import SENTENCES, make_video

    enc = make_video(tmp_path / "talk.mp4")
    store = tmp_path / "store"
    shutil.copytree(mixed["store"], store)
    plugins = str(Path(__file__).resolve().parent.parent / "plugins")
    script = (
        f"import json, sys\nsys.path.insert(0, {plugins!r})\nfrom pathlib import Path\n"
        "from aios_memory import MemoryStore\nfrom aios_memory.plugins import get_providers, register_plugin\n"
        "import aios_memory_video\n"
        "if 'clip-whisper-video' not in get_providers():\n    register_plugin(aios_memory_video)\n"
        f"s = MemoryStore({str(store)!r})\ns.add(Path({str(enc.path)!r}))\nout = {{}}\n"
        f"for q in {SENTENCES!r}:\n"
        "    for mode in ('vector', 'hybrid'):\n"
        "        h = s.search(q, k=2, mode=mode)[0]\n"
        "        out[q + '|' + mode] = [h.modality, h.extra['start_s'], [g['signal'] for g in h.extra['signals']]]\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=mixed["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    for i, sentence in enumerate(SENTENCES):
        modality, start, signals = got[f"{sentence}|vector"]
        assert modality == "video" and abs(start - enc.scene_starts[i]) < 0.15, (sentence, got)
        assert "transcript_embedding" in signals
        modality, start, signals = got[f"{sentence}|hybrid"]
        assert modality == "video" and abs(start - enc.scene_starts[i]) < 0.15 and "bm25" in signals

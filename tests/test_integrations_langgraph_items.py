"""How LangGraph items live in the store: media leaves (a process with CLIP on seeded weights and Whisper
on the real weights), filters as parameterised SQL, index paths and the fusion of embedding spaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aios_memory import InvalidInputError
from aios_memory.integrations import langgraph_items as li


def test_media_leaves_become_markers_and_come_back():
    value = {"a": b"\x89PNG", "b": [1, {"c": Path("/x/y.wav")}], "d": "text"}
    stored, plain, leaves = li.split_media(value)
    li.number_media(stored, leaves)
    assert [p for p, _ in leaves] == [("a",), ("b", 1, "c")]
    assert plain == {"a": None, "b": [1, {"c": None}], "d": "text"}
    assert json.loads(li.check_json(stored))["a"] == {li.MEDIA: 1, "path": None}
    assert li.restore(stored, {1: b"\x89PNG"}) == value and li.has_media(stored)
    with pytest.raises(InvalidInputError):
        li.check_json({"s": {1, 2}})
    with pytest.raises(InvalidInputError):
        li.split_media({1: "non-string key"})


def test_index_paths_name_leaves():
    from langgraph.store.base import tokenize_path

    assert li.indexes(("photos", 2), tokenize_path("photos[*]"))
    assert li.indexes(("photos", 2), tokenize_path("photos[2]"))
    assert not li.indexes(("photos", 1), tokenize_path("photos[2]"))
    assert li.indexes(("a", "b"), tokenize_path("a.b")) and not li.indexes(("a",), tokenize_path("a.b"))
    assert li.indexes(("anything", 0), "$")


def test_filters_are_parameterised():
    sql, params = li.filter_sql({"kind": "x' OR 1=1 --", "n": {"$gt": 2, "$ne": 5}, "o": {"p": True}})
    assert "x' OR 1=1" not in sql and "x' OR 1=1 --" in params and 2.0 in params
    for bad in ({"a.b": 1}, {"k'": 1}, {"n": {"$where": 1}}, {"n": {"$gt": "x"}}, {"n": object()}):
        with pytest.raises(InvalidInputError):
            li.filter_sql(bad)


def test_fusion_keeps_cosines_of_one_space_and_fuses_several():
    def hit(key, score):
        return ("ns", {"key": key}, score)

    one = li.fuse({"text": {"a": hit("a", 0.2), "b": hit("b", 0.9)}})
    assert [m["key"] for _, m, _ in one] == ["b", "a"] and one[0][2] == 0.9
    two = li.fuse({"clip": {"p": hit("p", 0.99)}, "text": {"t": hit("t", 0.1), "u": hit("u", 0.05)}})
    assert [m["key"] for _, m, _ in two] == ["t", "p", "u"]  # equal fused ranks: the text space first


# --- images and audio in values: a process with CLIP (seeded weights) and Whisper (real weights) -------
MULTIMODAL = """
import json, sys
from pathlib import Path
from aios_memory.integrations.langgraph import AiosMemoryStore
root = Path(sys.argv[1])
store = AiosMemoryStore(root / "store", index={"fields": ["caption", "photo", "recording"]})
photo = (root / "chelsea.png").read_bytes()
store.put(("trip",), "photo", {"caption": "", "photo": photo})
store.put(("trip",), "by-path", {"photo": root / "coffee.png"})
store.put(("trip",), "voice", {"recording": (root / "speech.wav").read_bytes()})
store.put(("trip",), "note", {"caption": "Pack the passports and the charger"})
got = store.get(("trip",), "photo")
print(json.dumps({
    "bytes_equal": got.value["photo"] == photo,
    "path": str(store.get(("trip",), "by-path").value["photo"]),
    "gate": [h.key for h in store.search(("trip",), query="what is the code for the gate?", limit=4)],
    "tables": store.store.stats()["namespaces"],
    "image_rows": store.store.sql("SELECT count(*) AS n FROM image_memories").to_pylist()[0]["n"],
    "audio_rows": store.store.sql("SELECT count(*) AS n FROM audio_memories").to_pylist()[0]["n"],
    "scored": [h.score is not None for h in store.search(("trip",), query="a photo", limit=4)],
}))
"""


@pytest.fixture(scope="module")
def media_home(model_home, tmp_path_factory):
    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder, real_images

    from aios_memory.plugins import get_provider

    get_provider("whisper-base").install()
    root = tmp_path_factory.mktemp("lgmedia")
    for name in ("text", "whisper"):
        shutil.copytree(model_home / "models" / name, root / "home" / "models" / name)
    make_clip_folder(root / "hf", TINY, seed=7)
    convert_clip(root / "hf", root / "home" / "models" / "clip")
    images = real_images()
    for name in ("chelsea", "coffee"):
        (root / f"{name}.png").write_bytes(images[name])
    subprocess.run(
        ["espeak-ng", "-w", str(root / "speech.wav"), "The gate code is four four seven one."], check=True
    )
    return root


def test_images_and_audio_in_values_are_embedded_by_clip_and_whisper(media_home):
    env = {**os.environ, "AIOS_MEMORY_HOME": str(media_home / "home")}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MULTIMODAL), str(media_home)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["bytes_equal"] and got["path"] == str(media_home / "coffee.png")
    assert got["gate"][0] == "voice"  # found by what the recording says (Whisper's transcript)
    assert (
        got["image_rows"] == 2 and got["audio_rows"] == 1 and got["tables"] == {"trip": 7}
    )  # a head row per item, a row per media leaf
    assert all(got["scored"])

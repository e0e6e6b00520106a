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


def test_media_leaves_are_listed_and_come_back():
    value = {"a": b"\x89PNG", "b": [1, {"c": Path("/x/y.wav")}], "d": "text"}
    plain, leaves = li.split_media(value)
    assert [p for p, _ in leaves] == [("a",), ("b", 1, "c")]
    assert plain == {"a": None, "b": [1, {"c": None}], "d": "text"}
    media = [
        [list(p), part, str(leaf) if isinstance(leaf, Path) else None]
        for part, (p, leaf) in enumerate(leaves, 1)
    ]
    restored = li.restore(json.loads(li.check_json(plain)), media, {1: b"\x89PNG"})
    assert restored == value
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
    sql, params = li.filter_sql(
        {"kind": "x' OR 1=1 --", "n": {"$gt": 2, "$ne": 5}, "o": {"p": True}, "k'": 1}
    )
    assert "x' OR 1=1" not in sql and "k'" not in sql and "x' OR 1=1 --" in params and 2.0 in params
    for bad in ({1: 1}, {"$or": [{"a": 1}]}, {"n": {"$where": 1}}, {"n": {"$gt": "x"}}, {"n": object()}):
        with pytest.raises(InvalidInputError):
            li.filter_sql(bad)


def test_fusion_keeps_cosines_of_one_space_and_fuses_several():
    def hit(key, score):
        return ("ns", {"key": key}, score)

    one = li.fuse({"text": {"a": hit("a", 0.2), "b": hit("b", 0.9)}})
    assert [m["key"] for _, m, _ in one] == ["b", "a"] and one[0][2] == 0.9
    two = li.fuse({"clip": {"p": hit("p", 0.99)}, "text": {"t": hit("t", 0.1), "u": hit("u", 0.05)}})
    assert [m["key"] for _, m, _ in two] == ["t", "p", "u"]  # equal fused ranks: the text space first


# --- what an independent review found (each a regression test) ---------------------------------------
@pytest.fixture()
def lg(model_home, tmp_path):
    from aios_memory.integrations.langgraph import AiosMemoryStore

    store = AiosMemoryStore(tmp_path / "store", index={"fields": ["text"]})
    store.put(("users", "alice"), "pet", {"text": "Alice's cat is called Miso", "n": 10**17 + 1, "s": "1"})
    return store


def test_a_row_written_outside_langgraph_neither_breaks_nor_shows(lg):
    lg.store.add("hostile", namespace="users.alice", metadata={"langgraph": {"key": "evil", "part": 0}})
    lg.store.add("odd", namespace="users.alice", metadata={"langgraph": {"key": "odd", "part": 0, "rev": "r",
                  "value": {}, "created_at": "yesterday", "updated_at": "x"}})  # fmt: skip
    assert [i.key for i in lg.search(("users",))] == ["pet"] and lg.get(("users", "alice"), "evil") is None
    assert [i.key for i in lg.search(("users",), query="a cat")] == ["pet"]
    lg.put(("users", "alice"), "evil", {"text": "now a real item"})  # replaces the foreign row
    assert lg.get(("users", "alice"), "evil").value == {"text": "now a real item"}
    lg.delete(("users", "alice"), "evil")
    rows = lg.store.sql("SELECT content FROM text_memories WHERE metadata->>'$.langgraph.key' = 'evil'")
    assert rows.num_rows == 0


def test_limits_beyond_the_store_maximum_and_values_stored_once(lg):
    lg.put(
        ("doc",), "book", {"chunks": [f"chunk {i} on topic {i % 7}" for i in range(40)]}, index=["chunks[*]"]
    )
    assert lg.search(("doc",), query="topic 5", limit=20_000)[0].key == "book"
    assert (
        lg.search(("doc",), query="topic 5", offset=2**62) == []
        and len(lg.search(("doc",), limit=2**63)) == 1
    )
    rows = lg.store.sql(
        "SELECT metadata->'$.langgraph.value' AS v FROM text_memories WHERE namespace = 'doc'"
    )
    assert sum(v is not None for v in rows.column("v").to_pylist()) == 1  # the value lives on the head row


def test_a_batch_that_fails_changes_nothing(lg):
    from langgraph.store.base import GetOp, PutOp

    lg.put(("t",), "rf", {"text": "x"}, ttl=1)
    version = lg.store.version
    for ops in (
        [PutOp(("ok",), "k", {"text": "x"}), PutOp(("n" * 300,), "k", {"text": "y"})],
        [GetOp(("t",), "rf", refresh_ttl=True), PutOp(("t",), "bad", {"s": {1, 2}})],
        [PutOp(("ok",), "k\ud800", {"text": "x"})],
        [PutOp(("ok",), "k", {"text": "x"}, ttl=float("nan"))],
        [PutOp(("ok",), "k", {"f": b"not an image"})],
        [PutOp(("ok",), "k", {"f": Path("/etc/passwd")})],
    ):
        with pytest.raises(InvalidInputError) as err:
            lg.batch(ops)
        assert "root:" not in str(err.value)  # a file's bytes never reach the message
    assert lg.store.version == version


def test_values_round_trip_as_given_and_filters_compare_json_types(lg):
    odd = {"v": {"$aios_media": 1, "path": "/etc/passwd"}, "w": {"$aios_media": 1, "path": None}}
    lg.put(("x",), "k", odd)
    assert lg.get(("x",), "k").value == odd
    assert [i.key for i in lg.search(("users",), filter={"n": 10**17 + 1})] == ["pet"]
    assert lg.search(("users",), filter={"n": 10**17}) == []  # integers compare exactly
    assert lg.search(("users",), filter={"s": {"$gt": 0}}) == []  # the string "1" is not a number
    lg.put(("x",), "keys", {"weird key": 1, "é": 2, "a.b": 3, "a/b~": 4})
    for spec in ({"weird key": 1}, {"é": 2}, {"a.b": 3}, {"a/b~": 4}):
        assert [i.key for i in lg.search(("x",), filter=spec)] == ["keys"]


def test_ttl_zero_expires_at_once_and_a_read_refreshes_in_one_commit(lg):
    lg.put(("t",), "gone", {"text": "x"}, ttl=0)
    assert lg.get(("t",), "gone") is None
    lg.put(("t",), "many", {"text": "a", "more": ["b", "c", "d"]}, index=["text", "more[*]"], ttl=5)
    version = lg.store.version
    assert lg.get(("t",), "many") is not None and lg.store.version == version + 1


def test_odd_queries_and_configuration(lg, tmp_path):
    from aios_memory.integrations.langgraph import AiosMemoryStore

    assert [i.score for i in lg.search(("users",), query="   ")] == [None]  # blank: no ranking
    for index in ({"fields": "text"}, {"dims": "abc"}, {"fields": [1]}):
        with pytest.raises(InvalidInputError):
            AiosMemoryStore(lg.store, index=index)
    same = AiosMemoryStore(Path(str(lg.store.path) + "/../" + Path(lg.store.path).name))
    assert same._lock is lg._lock  # one lock per store directory, however it is spelled


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

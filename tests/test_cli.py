"""The aios-memory command line, run for real in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import png_bytes, run_cli


def test_add_search_sql_delete_stats(model_home, tmp_path):
    s = ["--store", str(tmp_path / "st")]
    first = run_cli(
        *s, "add", "The user's cat is called Miso", "-n", "agent", "-m", '{"kind": "fact"}'
    ).stdout.split()
    second = run_cli(*s, "add", "Interest rates went up again", "-n", "agent").stdout.split()
    assert len(first) == len(second) == 1
    out = run_cli(*s, "search", "what pet does the user own", "-k", "1").stdout
    assert "Miso" in out and first[0] in out
    hits = json.loads(
        run_cli(
            *s, "search", "pets", "--where", "metadata->>'$.kind' = ?", "--param", "fact", "--json"
        ).stdout
    )
    assert [h["id"] for h in hits] == first
    # one shape with MCP's recall (aios_memory.mcp_server.memory_dict): no vectors, bytes or provider
    from aios_memory.mcp_server import memory_dict
    from aios_memory.store import MemoryStore

    same = memory_dict(MemoryStore(tmp_path / "st").search("pets", k=1, namespace="agent")[0])
    assert list(hits[0]) == list(same) and hits[0]["metadata"] == {"kind": "fact"}
    rows = json.loads(
        run_cli(
            *s,
            "sql",
            "SELECT content FROM text_memories WHERE namespace = ? ORDER BY 1",
            "--param",
            "agent",
            "--json",
        ).stdout
    )
    assert [r["content"] for r in rows] == ["Interest rates went up again", "The user's cat is called Miso"]
    table = run_cli(*s, "sql", "SELECT count(*) AS n FROM text_memories").stdout
    assert "(1 row;" in table and "2" in table
    assert run_cli(*s, "delete", first[0]).stdout.strip() == "deleted 1"
    stats = json.loads(run_cli(*s, "stats").stdout)
    assert stats["tables"]["text"]["memories"] == 1 and stats["namespaces"] == {"agent": 1}
    doctor = json.loads(run_cli(*s, "doctor").stdout)
    assert doctor["ok"] is True
    run_cli(*s, "add", "A third memory, in its own fragment", "-n", "agent")
    assert json.loads(run_cli(*s, "compact").stdout) == {"merged_fragments": {"text": 2}}
    assert json.loads(run_cli(*s, "cleanup", "--older-than", "0").stdout)["files_removed"] == 3
    stats = json.loads(run_cli(*s, "stats").stdout)["tables"]["text"]
    assert stats["memories"] == 2 and stats["fragments"] == 1


def test_errors_are_clear_and_exit_nonzero(model_home, tmp_path):
    s = ["--store", str(tmp_path / "st")]
    run_cli(*s, "add", "something")
    bad = run_cli(*s, "sql", "DELETE FROM text_memories", check=False)
    assert bad.returncode == 1 and "QueryError" in bad.stderr and "read-only" in bad.stderr
    assert "Traceback" not in bad.stderr
    empty = run_cli(*s, "add", "   ", check=False)
    assert empty.returncode == 1 and "EmptyContentError" in empty.stderr
    missing = run_cli(*s, "delete", "no-such-id", check=False)
    assert missing.returncode == 1 and "MemoryNotFoundError" in missing.stderr
    usage = run_cli(*s, "search", check=False)
    assert usage.returncode == 2 and "exactly one of QUERY or --file" in usage.stderr
    assert json.loads(run_cli(*s, "stats").stdout)["tables"]["text"]["memories"] == 1


def test_import_skips_what_no_provider_can_embed(model_home, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Notes from Monday's planning meeting")
    (folder / "sub" / "b.md").write_text("# Recipe\nMix flour and water.")
    (folder / "photo.png").write_bytes(png_bytes(size=32))  # CLIP is registered but has no weights here
    (folder / "blob.bin").write_bytes(bytes(range(256)))
    (folder / "photo2.jpg").write_bytes(png_bytes(size=24))  # a PNG named .jpg: content decides
    proc = run_cli("--store", str(tmp_path / "st"), "import", str(folder))
    assert (
        "imported 2 files as 2 memories" in proc.stdout
        and "skipped 3 files (reasons on stderr)" in proc.stdout
    )
    # skips grouped by reason, the reason said once, with the way out
    images = [line for line in proc.stderr.splitlines() if line.startswith("  skipped 2 images (")]
    assert len(images) == 1 and "photo.png" in images[0] and "photo2.jpg" in images[0], proc.stderr
    assert "has no weights installed; run `aios-memory models install clip`" in images[0]
    assert "--download" in images[0] and "--from PATH" in images[0]
    assert proc.stderr.count("has no weights installed") == 1
    assert any(
        line.startswith("  skipped 1 file (") and "blob.bin" in line for line in proc.stderr.splitlines()
    )
    assert "import: 100%" in proc.stderr  # the progress bar ran to the end
    one = tmp_path / "one.txt"
    one.write_text("A single note")
    proc = run_cli("--store", str(tmp_path / "st"), "import", str(one))
    assert "imported 1 file as 1 memory into" in proc.stdout and "skipped" not in proc.stdout


def test_plugins_and_models(model_home):
    plugins = json.loads(run_cli("plugins").stdout)
    assert {"name": "minilm-l6-v2", "modality": "text", "dim": 384}.items() <= next(
        p for p in plugins["providers"] if p["name"] == "minilm-l6-v2"
    ).items()
    models = json.loads(run_cli("models", "list").stdout)
    assert {"model": "text", "provider": "minilm-l6-v2", "installed": True} in models["models"]
    weights = model_home / "models" / "text" / "weights.parquet"
    before = weights.stat().st_mtime_ns
    assert "weights.parquet" in run_cli("models", "install", "text").stdout
    assert weights.stat().st_mtime_ns == before  # converted once, not again
    unknown = run_cli("models", "install", "nope", check=False)
    assert unknown.returncode == 2 and "known: clip, text, whisper" in unknown.stderr


def test_models_install_from_folder(minilm_source, tmp_path):
    env = {"AIOS_MEMORY_HOME": str(tmp_path / "home")}
    run_cli("--store", str(tmp_path / "s"), "init", env=env)
    missing = run_cli("--store", str(tmp_path / "s"), "search", "anything", env=env, check=False)
    assert missing.returncode == 1 and "aios-memory models install text" in missing.stderr
    out = run_cli("models", "install", "text", "--from", str(minilm_source), env=env).stdout
    assert "weights.parquet" in out and (tmp_path / "home" / "models" / "text" / "weights.parquet").is_file()


def test_demo_is_the_main_job(model_home, tmp_path):
    s = ["--store", str(tmp_path / "demo")]
    out = run_cli(*s, "demo").stdout
    assert out.splitlines()[0].startswith(f"store: {tmp_path / 'demo'} (from --store;")
    assert "added 25 demo memories" in out
    # the answers come from the real model: the relevant memory is ranked first
    after_cook = out.split("What should I cook for the user?")[1].splitlines()[1]
    assert "vegetarian" in after_cook
    after_db = out.split("how do databases survive a power cut?")[1].splitlines()[1]
    assert "crash safe" in after_db
    if Path("/usr/share/sounds/alsa/Rear_Left.wav").exists():  # the audio part: real voices, real Whisper
        assert "added 8 spoken clips" in out
        assert "Rear_Left.wav" in out.split("? rear left")[1].splitlines()[1]
    again = run_cli(*s, "demo").stdout
    assert "already holds 25 demo memories" in again and "added 8 spoken clips" not in again


def test_demo_first_says_where_its_store_is_and_which_models_it_installs(tmp_path, monkeypatch):
    """In process, models and store stubbed: the lines a first demo prints before its long installs."""
    from click.testing import CliRunner

    from aios_memory import cli, demo, model_commands

    installed: list[str] = []
    monkeypatch.setattr(model_commands, "install_model", installed.append)
    monkeypatch.setattr(cli, "_store", lambda ctx, **kw: None)
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: None)
    home = tmp_path / "home"  # no model installed here
    got = CliRunner().invoke(cli.cli, ["demo", "--no-audio"], env={"AIOS_MEMORY_HOME": str(home)})
    assert got.exit_code == 0, got.output
    lines = got.output.splitlines()
    assert (
        lines[0] == f"store: {home / 'store'} (the default store; later commands without --store use it too)"
    )
    assert lines[1].startswith("installing the text model (MiniLM, once:") and installed == ["text"]
    monkeypatch.setattr(type(model_commands._by_model_name("text")), "is_installed", lambda self: True)
    got = CliRunner().invoke(cli.cli, ["demo", "--no-audio"], env={"AIOS_MEMORY_HOME": str(home)})
    assert "installing" not in got.output and installed == ["text", "text"]
    said: list[str] = []
    demo.run_audio_demo(_OneClip(), [tmp_path / "a.wav"], echo=said.append)
    assert said[0] == f"\nadded 1 spoken clip from {demo.ALSA_SOUNDS} (Whisper transcribed them)"


class _OneClip:
    """A store that holds no clip yet and finds the one ``run_audio_demo`` adds."""

    def sql(self, *a: object) -> object:
        import pyarrow as pa

        return pa.table({"source": pa.array([], pa.string())})

    def add_many(self, *a: object, **kw: object) -> None:
        pass

    def search(self, *a: object, **kw: object) -> list[object]:
        from types import SimpleNamespace

        return [SimpleNamespace(score=1.0, source="a.wav", extra={"transcript": "a"})]


def test_tampered_weight_file_is_refused_and_store_unchanged(model_home, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    home = tmp_path / "home"
    shutil.copytree(model_home / "models", home / "models")
    env = {"AIOS_MEMORY_HOME": str(home)}
    s = ["--store", str(tmp_path / "st")]
    run_cli(*s, "add", "a memory written before the damage", env=env)
    weights = home / "models" / "text" / "weights.parquet"
    table = pq.read_table(weights)
    data = table.column("data").to_pylist()
    row = table.column("name").to_pylist().index("encoder.layer.3.output.dense.weight")
    blob = bytearray(data[row])
    blob[100] ^= 0x01  # one flipped bit in one float
    data[row] = bytes(blob)
    table = table.set_column(5, table.schema.field("data"), pa.array(data, pa.large_binary()))
    pq.write_table(table, weights, compression="NONE")
    bad = run_cli(*s, "add", "this must not be stored", env=env, check=False)
    assert bad.returncode == 1
    assert "WeightFileError" in bad.stderr and "encoder.layer.3.output.dense.weight" in bad.stderr
    rows = json.loads(run_cli(*s, "sql", "SELECT content FROM text_memories", "--json", env=env).stdout)
    assert rows == [{"content": "a memory written before the damage"}]


def test_dedupe_and_history_commands(model_home, tmp_path):
    s = ["--store", str(tmp_path / "st")]
    (first,) = run_cli(*s, "add", "The spare key is under the blue flowerpot.").stdout.split()
    (again,) = run_cli(
        *s, "add", "The spare key is under the blue flowerpot!", "--dedupe", "0.95"
    ).stdout.split()
    assert again == first
    bad = run_cli(*s, "add", "x", "--dedupe", "1.5", check=False)
    assert bad.returncode != 0 and "dedupe" in bad.stderr.lower()
    # update through the API, then read the timeline through the CLI
    from aios_memory import MemoryStore

    MemoryStore(tmp_path / "st").update(first, "The spare key is now in the mailbox.")
    timeline = json.loads(run_cli(*s, "history", first).stdout)
    assert [e["operation"] for e in timeline] == ["add", "update"]
    assert timeline[-1]["content"] == "The spare key is now in the mailbox."
    missing = run_cli(*s, "history", "nope", check=False)
    assert missing.returncode != 0 and "MemoryNotFoundError" in missing.stderr


def test_search_options_and_index_create(model_home, tmp_path):
    s = ["--store", str(tmp_path / "st")]
    run_cli(*s, "add", "The garage code is 1234.")
    run_cli(*s, "add", "The garage code changed to 9876.")
    hits = json.loads(run_cli(*s, "search", "garage code", "--newest", "--json").stdout)
    assert [h["content"] for h in hits][0] == "The garage code changed to 9876."
    assert hits[0]["created_at"] >= hits[1]["created_at"]
    assert json.loads(run_cli(*s, "search", "garage code", "--min-score", "0.99", "--json").stdout) == []
    decayed = json.loads(run_cli(*s, "search", "garage code", "--half-life", "1e-3", "--json").stdout)
    assert all(h["score"] < 0.5 for h in decayed)  # both memories are many half-lives old
    built = json.loads(run_cli(*s, "index", "create", "text").stdout)
    assert {k: built[k] for k in ("modality", "kind", "column", "rows", "committed")} == {
        "modality": "text",
        "kind": "hnsw",
        "column": "embedding",
        "rows": 2,
        "committed": True,
    }
    assert built["bytes"] > 0 and built["version"] == json.loads(run_cli(*s, "stats").stdout)["version"]
    exact = json.loads(run_cli(*s, "search", "garage", "--exact", "--json").stdout)
    approx = json.loads(run_cli(*s, "search", "garage", "--json").stdout)
    assert [h["id"] for h in exact] == [h["id"] for h in approx]


READING = [
    ["search", "anything"],
    ["sql", "SELECT 1"],
    ["stats"],
    ["history", "some-id"],
    ["doctor"],
    ["delete", "some-id"],
    ["compact"],
    ["cleanup"],
    ["files"],
    ["index", "create", "text"],
    ["serve"],
    ["token", "list"],
    ["ui", "--no-browser", "--port", "0"],
]


def test_a_mistyped_store_is_refused_by_every_reading_command_and_created_only_by_writes(
    model_home, tmp_path
):
    missing = tmp_path / "stroe"  # a typo: nothing there
    plain = tmp_path / "Documents"  # a directory that is not a store
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    for where in (missing, plain):
        for args in READING:
            proc = run_cli("--store", str(where), *args, check=False)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            line = proc.stderr.strip().splitlines()[-1]
            assert f"no store at {where}" in line and "StoreNotFoundError" in line, (args, proc.stderr)
            assert "Traceback" not in proc.stderr
    assert not missing.exists()  # nothing was created
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"]
    # a writing command creates the store, and says so the first time only
    first = run_cli("--store", str(missing), "add", "The first memory")
    assert f"created a new store at {missing}" in first.stderr
    again = run_cli("--store", str(missing), "add", "The second memory")
    assert "created a new store" not in again.stderr
    assert json.loads(run_cli("--store", str(missing), "stats").stdout)["tables"]["text"]["memories"] == 2
    made = run_cli("--store", str(tmp_path / "empty"), "init")
    assert "created a new store at" in made.stderr and "version 0" in made.stdout
    assert json.loads(run_cli("--store", str(tmp_path / "empty"), "stats").stdout)["tables"] == {}


def test_exact_repeats_print_the_stored_id_and_repeat_stores_one_on_purpose(model_home, tmp_path):
    s = ["--store", str(tmp_path / "st")]
    first = run_cli(*s, "add", "Parked on level 3, bay 41").stdout.split()
    assert run_cli(*s, "add", "Parked on level 3, bay 41").stdout.split() == first
    forced = run_cli(*s, "add", "Parked on level 3, bay 41", "--repeat").stdout.split()
    assert forced != first
    both = run_cli(*s, "add", "x", "--repeat", "--dedupe", "0.9", check=False)
    assert both.returncode == 2 and "--repeat" in both.stderr
    assert json.loads(run_cli(*s, "stats").stdout)["tables"]["text"]["memories"] == 2


def test_what_a_newcomer_tripped_over(model_home, tmp_path):
    mine = tmp_path / "Pictures"  # a folder of one's own files is not made a store by a write
    mine.mkdir()
    (mine / "note.txt").write_text("Buy milk")
    refused = run_cli("--store", str(mine), "add", "hello", check=False)
    assert refused.returncode == 1 and "holds files but no store" in refused.stderr
    daemon = run_cli("--store", str(mine), "daemon", "--idle-exit", "1", check=False)
    assert daemon.returncode == 1 and "holds files but no store" in daemon.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["note.txt"]
    s = ["--store", str(tmp_path / "st")]
    bad = run_cli(*s, "add", "x", "-m", "[1, 2]", check=False)
    assert bad.returncode == 1 and "must be a JSON object" in bad.stderr and "got a list" in bad.stderr
    first = run_cli(*s, "add", "Buy milk\nand | eggs")
    assert "already stored" not in first.stderr
    again = run_cli(*s, "add", "Buy milk\nand | eggs")
    assert again.stdout == first.stdout and "already stored in namespace 'default'" in again.stderr
    table = run_cli(*s, "sql", "SELECT content, source FROM text_memories").stdout.splitlines()
    assert table[1] == "Buy milk\\nand \\| eggs | NULL" and table[2].startswith("(1 row;")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("x")
    none = run_cli(*s, "import", str(empty), check=False)
    assert none.returncode == 1 and "no files to import" in none.stderr
    assert "left out 1 file hidden or of a store" in none.stderr
    after = run_cli("stats", *s, check=False)  # --store after the command: where it goes
    assert after.returncode == 2 and "--store goes before the command: aios-memory --store" in after.stderr
    both = run_cli(*s, "add", "x", "--file", str(empty / ".hidden"), check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    text_file = run_cli(*s, "add", "--file", str(empty / ".hidden"), check=False)
    assert (
        text_file.returncode == 1 and "a text file is added by `aios-memory import PATH`" in text_file.stderr
    )
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n\xff\xfe binary")
    pdf = run_cli(*s, "add", "--file", str(tmp_path / "doc.pdf"), check=False)
    assert pdf.returncode == 1 and "UnsupportedMediaError" in pdf.stderr and "import PATH" not in pdf.stderr
    lone = run_cli(*s, "search", "milk", "--param", "1", check=False)
    assert lone.returncode == 2 and "there is no --where" in lone.stderr
    id_ = first.stdout.strip()
    changed = json.loads(run_cli(*s, "update", id_, "-m", '{"kind": "list"}').stdout)
    assert changed["metadata"] == {"kind": "list"} and changed["content"] == "Buy milk\nand | eggs"
    assert [e["operation"] for e in json.loads(run_cli(*s, "history", id_).stdout)] == ["add", "update"]
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)))
    failed = run_cli(*s, "import", str(blob), check=False)
    assert failed.returncode == 1 and "skipped 1 file" in failed.stdout

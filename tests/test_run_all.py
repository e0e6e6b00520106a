"""bench/run_all.py and the evidence it writes (bench/evidence.py): every section of docs/benchmarks.md
comes from docs/benchmarks.json, no section is older than the code it measured, and the docs quote no
figure that no section holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import evidence  # noqa: E402
import run_all  # noqa: E402

# Pages whose figures must come from a bench section: the README and every page of docs/ but
# docs/reliability.md, whose figures are what the fault and soak tests it names printed (each row gives
# the command), not bench figures.
PAGES = [
    "README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "reliability.md"),
]
# Values on those pages that are settings, limits, sizes of inputs or arithmetic on them, not measurements.
SETTINGS = {
    "README.md": {"235 MB", "21 minutes"},  # the weight packages' download size (pip's); the CI run's time
    "docs/benchmarks.md": {"14 minutes", "85%"},  # 20,000 soak rounds at its rate; the ingest target
    "docs/concepts.md": {"60 s", "30 s"},  # the writers' lock time-out; Whisper's window
    "docs/integrations.md": {"64 MiB", "30 s", "5 s"},  # upload limit; Whisper's window; systemd restart
    "docs/models.md": {"600 MB", "30 s"},  # the transformers download; Whisper's window
    # backoff, lock time-out, fragment sizes, input sizes, and arithmetic on them (100 M x 512 float32)
    "docs/scale-out.md": {"5 ms", "1 s", "60 s", "64 MiB", "3-30 s", "1 GiB", "2 KB", "100-200 KB", "205 GB"},
    "docs/sql.md": {"10 s"},  # the default query time-out
    "docs/video.md": {"3,600 s"},  # the longest video a store takes (a limit)
    "docs/ui.md": {"30 s", "32 MiB"},  # Whisper's window; the upload limit
}


def data() -> dict:
    return evidence.load(evidence.DATA)


# --- the published page ----------------------------------------------------------------------------------
def test_every_bench_has_a_section_rendered_from_the_data():
    got = data()
    missing = [m for m in run_all.MODULES if m not in got["sections"]]
    orphans = sorted(set(got["sections"]) - set(run_all.MODULES))
    assert not orphans, (
        f"sections of no bench in run_all.MODULES (their figures would still count): {orphans}"
    )
    assert not missing, (
        f"no section for {missing}: python bench/run_all.py --only {','.join(missing)} --write-docs"
    )
    assert evidence.page_block(evidence.DOC) == evidence.render_block(got, run_all.MODULES), (
        "the generated block of docs/benchmarks.md differs from docs/benchmarks.json: it was edited by hand; "
        "re-render it with python bench/run_all.py --only NAME --write-docs"
    )
    for name, sec in got["sections"].items():
        assert sec["rows"], name
        assert {"time", "machine", "commit", "command", "quick", "took"} <= set(sec["stamp"]), name
        assert f"bench/{run_all.FILES.get(name, 'bench_' + name)}.py" in sec["code"], name


def test_no_section_is_older_than_the_code_it_measured():
    stale = {}
    for name, sec in data()["sections"].items():
        moved = evidence.changed(sec["code"])
        if moved:
            stale[name] = moved
    assert not stale, "stale sections (their code changed since they ran; rerun them): " + "; ".join(
        f"python bench/run_all.py --only {n} --write-docs ({', '.join(f[:5])}{' ...' if len(f) > 5 else ''})"
        for n, f in stale.items()
    )


def test_the_docs_quote_only_figures_a_section_holds():
    pages = {p: (ROOT / p).read_text() for p in PAGES}
    bad = evidence.unheld(pages, data(), SETTINGS)
    assert not bad, "figures no section of docs/benchmarks.json holds:\n" + "\n".join(
        f"  {f.page}:{f.line}: {f.text}" for f in bad
    )


# --- the machinery can fail ------------------------------------------------------------------------------
ROWS = [
    {"area": "a", "measure": "load", "ours": 0.0449, "reference": 0.0863, "ratio": 1.92, "floor": None,
     "unit": "s", "note": "import torch 0.97 s"},
    {"area": "b", "measure": "add p50 @100k", "ours": 15.24, "reference": 8.79, "ratio": 0.58, "floor": 3.0,
     "unit": "ms", "note": ""},
]  # fmt: skip


def test_a_figure_from_nowhere_is_found_and_a_rounded_one_holds():
    d = {"sections": {"x": {"rows": ROWS}}}
    page = (
        "Loads in 0.045 s, 1.9× faster; torch 0.97 s; p50 15.2 ms (15,240 µs); the 3.0 ms floor is 0.003 s.\n"
        "Old claims: 0.301 s and 3.7× and 1.7–2.1×.\n"
        "`timeout 60 s` in code and <!-- 9.9× in a comment --> are not figures; a setting 5 s is listed.\n"
        "```\n12.5 ms in a code block\n```\n"
        "Lists: 15.2, 8.8 and 9.1 ms; 1.92/0.58×; from 9 to 15 ms; ~2.6x; 4 x 5,000 rounds; 2048x2048.\n"
        "Units: 8.8 ms/sentence; 44.9 ms; 86 GFLOP; 86.3 ms is 0.0863 s, but 86.3× is no ratio held.\n"
    )
    bad = evidence.unheld({"p.md": page}, d, {"p.md": {"5 s"}})
    assert [(f.line, f.text) for f in bad] == [
        (2, "0.301 s"), (2, "3.7×"), (2, "1.7–2.1×"),
        (7, "15.2, 8.8 and 9.1 ms"), (7, "2.6x"),
        (8, "86 GFLOP"), (8, "86.3×"),
    ]  # fmt: skip
    assert evidence.holds("1.92", [(1.92, "×")], "×") and not evidence.holds("1.93", [(1.92, "×")], "×")
    assert evidence.holds("15,240", [(15.24, "ms")], "µs") and not evidence.holds(
        "15,240", [(15.24, "s")], "µs"
    )
    assert evidence.holds("2", [(1.6, "×")], "×") and not evidence.holds("2", [(1.4, "×")], "×")
    assert evidence.holds("607", [(0.637, "GB")], "MiB") and not evidence.holds("637", [(0.637, "GB")], "MiB")
    assert evidence.holds("1.2", [(1258291.0, "bytes")], "MiB") and evidence.holds(
        "3", [(180.0, "s")], "minutes"
    )
    assert evidence.holds("99.5", [(0.995, "")], "%") and evidence.holds("12.2", [(12.23, "ms/image")], "ms")


def test_a_number_of_another_kind_or_unit_holds_no_figure():
    """A figure holds only against a number of its own kind, converted exactly: the S3 section's "writer
    CPU 26.8 ms/commit" once let "26.8 commits/s" stand after the rate it quoted had become 16.4."""
    rows = [*ROWS, {"area": "c", "measure": "rate", "ours": 17.15, "reference": 18.48, "ratio": 0.93,
                    "floor": None, "unit": "images/s", "note": "2.5 texts/s"},
            {"area": "c", "measure": "recall@10", "ours": 0.995, "reference": None, "ratio": None,
             "floor": None, "unit": "", "note": ""}]  # fmt: skip
    d = {"sections": {"x": {"rows": rows}}}
    page = (
        "Kinds: 8.79 images/s; 0.58 ms; 15.24×; 0.97 MiB; 1.92 s; 58%; 17.15 texts/s; 2.5 images/s.\n"
        "Units: 15.24 s; 44.9 s; 0.0863 ms; 0.97 ms; 3 s; 17.15 ms/image.\n"
        "Same: 8.79 ms; 0.58×; 15.24 ms/add; 0.97 s; 1.92×; 17.15 images/s; 2.5 texts/s; 99.5%; 44.9 ms.\n"
    )
    bad = evidence.unheld({"p.md": page}, d, {})
    assert [(f.line, f.text) for f in bad] == [
        (1, "8.79 images/s"), (1, "0.58 ms"), (1, "15.24×"), (1, "0.97 MiB"), (1, "1.92 s"), (1, "58%"),
        (1, "17.15 texts/s"), (1, "2.5 images/s"),
        (2, "15.24 s"), (2, "44.9 s"), (2, "0.0863 ms"), (2, "0.97 ms"), (2, "3 s"), (2, "17.15 ms/image"),
    ]  # fmt: skip


def test_a_changed_or_removed_file_makes_its_section_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "n.py").write_text("y = 1\n")
    code = evidence.code_stamp(["m.py", "n.py"])
    assert evidence.changed(code) == []
    (tmp_path / "m.py").write_text("x = 2\n")
    (tmp_path / "n.py").unlink()
    assert evidence.changed(code) == ["m.py", "n.py"]


def test_a_hand_edited_table_no_longer_matches_the_data():
    got = {"sections": {"x": {"rows": ROWS, "code": {"bench/bench_x.py": "0" * 16},
                              "stamp": {"time": "t", "machine": "m", "commit": "c", "dirty": False,
                                        "command": "python bench/run_all.py --only x", "quick": True,
                                        "took": "1 s"}}}}  # fmt: skip
    block = evidence.render_block(got, ["x"])
    assert "| b | add p50 @100k | 15.24 | 8.79 | 0.58× | 3.00 | ms | — |" in block
    assert block.replace("15.24", "14.24") != evidence.render_block(got, ["x"])


def test_run_all_writes_a_stamped_section_with_the_code_it_ran(tmp_path):
    """A real run of the smallest bench (floors) into copies of the page and the data file."""
    doc, store = tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    doc.write_text(f"# B\n\n{evidence.BEGIN}\n{evidence.END}\n\nprose\n")
    env = {**os.environ, "AIOS_BENCH_DOC": str(doc), "AIOS_BENCH_DATA": str(store)}
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--only", "floors", "--quick", "--write-docs"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(store.read_text())
    sec = got["sections"]["floors"]
    assert len(sec["rows"]) >= 20 and sec["stamp"]["quick"] is True
    assert "bench/floors.py" in sec["code"] and "plugins/aios_memory_clip/model.py" in sec["code"]
    assert all(len(h) == 16 for h in sec["code"].values())
    assert evidence.changed(sec["code"]) == []
    text = doc.read_text()
    assert text.endswith("\nprose\n") and evidence.page_block(doc) == evidence.render_block(got, ["floors"])
    assert f"commit `{sec['stamp']['commit']}`" in text


def test_check_names_the_stale_sections(tmp_path):
    store = tmp_path / "benchmarks.json"
    store.write_text(json.dumps({"sections": {"floors": {"rows": ROWS, "code": {"bench/floors.py": "0" * 16},
                                                          "stamp": {"time": "t", "commit": "c"}}}}))  # fmt: skip
    env = {**os.environ, "AIOS_BENCH_DATA": str(store)}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--check"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1
    assert "floors: stale, 1 of its files changed since t: bench/floors.py" in p.stdout
    assert "load: no section" in p.stdout


@pytest.mark.parametrize("name", ["README.md", "docs/concepts.md", "docs/models.md"])
def test_seeded_clip_figures_say_so(name):
    """CLIP's agreement with transformers is measured on seeded weights (no package ships CLIP's): every
    sentence (or table row) that gives a CLIP cosine says so."""
    text = (ROOT / name).read_text()
    for part in re.split(r"(?<=[.!?])\s|\n\n|\n\|", text):
        if "CLIP" in part and "cosine" in part and re.search(r"\b(1\.0000000|0\.9999\d*)\b", part):
            assert "seeded" in part, f"{name}: {part.strip()}"

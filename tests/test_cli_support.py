"""What the command modules share (aios_memory.cli_support): values on one line, the files an import takes."""

from __future__ import annotations

import pytest

from aios_memory import InvalidInputError
from aios_memory.cli_support import cell, file_list, metadata_object


def test_a_cell_is_one_line_and_says_when_it_is_cut():
    assert cell(None) == "NULL"
    assert cell("a|b\nc") == "a\\|b\\nc"
    long = "x" * 100
    assert cell(long) == "x" * 59 + "…" and len(cell(long)) == 60
    assert cell("short") == "short"


@pytest.mark.parametrize(
    ("text", "said"), [("[1, 2]", "a list"), ('"a"', "a string"), ("null", "null"), ("3", "a number")]
)
def test_metadata_must_be_an_object(text, said):
    with pytest.raises(InvalidInputError, match=f"must be a JSON object.*got {said}"):
        metadata_object(text)
    assert metadata_object('{"kind": "fact"}') == {"kind": "fact"}
    assert metadata_object(None) is None


def test_an_import_skips_hidden_files_and_stores_inside_the_folder(tmp_path):
    from aios_memory import MemoryStore

    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("y")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    MemoryStore(tmp_path / "sub" / "memories")  # a store inside the folder: none of its files
    (tmp_path / "sub" / "memories" / "stray.txt").write_text("z")
    assert file_list((tmp_path,)) == [tmp_path / "a.txt", tmp_path / "sub" / "b.txt"]
    assert file_list((tmp_path / ".DS_Store",)) == [tmp_path / ".DS_Store"]  # named: taken

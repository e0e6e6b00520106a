"""Every ```python block in the README and docs/ runs, in order, per file, against the real model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_every_doc_is_collected():
    assert {p.name for p in DOCS} >= {"README.md", "quickstart.md", "concepts.md", "plugins.md", "sql.md"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(doc, model_home, tmp_path, monkeypatch, capsys):
    blocks = BLOCK.findall(doc.read_text())
    if not blocks:
        pytest.skip(f"{doc.name} has no python blocks")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"doc_{doc.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{doc.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # report which block of which file broke
            raise AssertionError(f"{doc.name} block {i} failed: {exc!r}\n{code}") from exc
    assert capsys.readouterr().out  # the examples print what they show

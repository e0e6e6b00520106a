"""The evidence behind docs/benchmarks.md: every bench's rows as measured, with a stamp of the run and of
the code it measured, and the checks that the page still holds (tests/test_run_all.py runs them).

``docs/benchmarks.json`` keeps, per bench, its raw rows, when and how it ran (commit, machine, command,
``--quick``) and the sha256 of every project file the run could have executed. The generated block of
docs/benchmarks.md is rendered from that file and nothing else, so a table cannot be edited by hand.

A section is *stale* when one of its files changed since it ran (or is gone): its figures no longer come
from the code as it is. A *figure* in the docs' prose (a number with a unit of time, size, rate, or a
ratio ×) holds when some number of some section rounds to it at the precision the prose gives; a value
that is a setting, not a measurement, is listed in ``SETTINGS`` with its page.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("AIOS_BENCH_DATA", ROOT / "docs" / "benchmarks.json"))  # tests point these
DOC = Path(os.environ.get("AIOS_BENCH_DOC", ROOT / "docs" / "benchmarks.md"))  # at copies
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
CODE_DIRS = ("aios_memory", "plugins", "converters", "bench", "tests")  # where project code lives
PRODUCT = ("aios_memory", "plugins", "converters")  # what a bench that starts processes may run in them
COLUMNS = ("area", "measure", "ours", "reference", "ratio", "floor", "unit", "note")


# --- the code a run measured ----------------------------------------------------------------------------
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def project_file(name: str | None) -> str | None:
    """``name`` relative to the checkout when it is project code (not a site-packages copy), else None."""
    if not name or not name.endswith(".py"):
        return None
    try:
        rel = Path(name).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return rel.as_posix() if rel.parts[0] in CODE_DIRS else None


def product_files() -> list[str]:
    """Every Python file of the product that git tracks (what a child process of a bench may import)."""
    import subprocess

    got = subprocess.run(["git", "ls-files", "--", *(f"{t}/*.py" for t in PRODUCT)], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    if got.returncode == 0 and got.stdout.strip():
        return sorted(got.stdout.split())
    out = []  # not a git checkout (an sdist): every Python file under the product's folders
    for top in PRODUCT:
        for p in (ROOT / top).rglob("*.py"):
            rel = p.relative_to(ROOT)
            if not any(part.startswith(".") or part in ("build", "__pycache__") for part in rel.parts):
                out.append(rel.as_posix())
    return sorted(out)


def code_stamp(files: Iterable[str]) -> dict[str, str]:
    return {f: digest(ROOT / f) for f in sorted(set(files))}


def changed(code: dict[str, str]) -> list[str]:
    """The files of ``code`` whose content differs now (or that are gone)."""
    out = []
    for f, h in code.items():
        p = ROOT / f
        if not p.is_file() or digest(p) != h:
            out.append(f)
    return out


# --- the data file and the page rendered from it --------------------------------------------------------
def load(path: Path = DATA) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"sections": {}}


def save(data: dict, path: Path = DATA) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=float) + "\n")


def fmt(v: object) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    body = []
    for r in rows:
        cells = []
        for k in COLUMNS:
            v = r.get(k)
            cells.append(f"{float(v):.2f}×" if k == "ratio" and v not in (None, "") else fmt(v))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, *body])


def render_section(name: str, sec: dict) -> str:
    s = sec["stamp"]
    code = "" if not s.get("dirty") else " plus uncommitted changes to the files it measured"
    return (
        f"<!-- bench:{name} -->\n### bench_{name}\n\n"
        f"Measured {s['time']} on {s['machine']}; commit `{s['commit']}`{code}; `{s['command']}`; "
        f"{len(sec['rows'])} rows, {s['took']}; code: {len(sec['code'])} files "
        f"(sha256 in docs/benchmarks.json).\n\n{table(sec['rows'])}\n\n<!-- /bench:{name} -->\n"
    )


def render_block(data: dict, order: list[str]) -> str:
    secs = data["sections"]
    names = [n for n in order if n in secs] + sorted(set(secs) - set(order))
    return "\n" + "\n".join(render_section(n, secs[n]) for n in names)


def write_page(data: dict, order: list[str], doc: Path = DOC) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} block to replace")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + render_block(data, order) + text[end:])


def page_block(doc: Path = DOC) -> str:
    text = doc.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)]


# --- do the docs' figures hold? --------------------------------------------------------------------------
NUM = r"\d[\d,]*(?:\.\d+)?"
UNITS = r"×|ms|s|µs|MiB|MB|GiB|GB|KiB|GB/s|GFLOP/s|%|(?:images|img|texts|files|rows|commits|sentences)/s"
FIGURE = re.compile(rf"(?<![\w.\-/])({NUM})(?:\s?[–-]\s?({NUM}))?\s?({UNITS})(?![\w/])")


@dataclass(frozen=True)
class Figure:
    page: str
    line: int
    text: str  # as written, e.g. "1.7–2.1×"
    values: tuple[str, ...]  # the numbers in it, as written


def prose(text: str) -> str:
    """``text`` without the generated block, code blocks, inline code and HTML comments (kept line for line)."""

    def blank(m: re.Match) -> str:
        return "\n" * m.group(0).count("\n")

    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), blank, text, flags=re.S)
    text = re.sub(r"```.*?```", blank, text, flags=re.S)
    text = re.sub(r"<!--.*?-->", blank, text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def figures(page: str, text: str) -> list[Figure]:
    out = []
    for i, line in enumerate(prose(text).splitlines(), 1):
        for m in FIGURE.finditer(line):
            vals = tuple(v for v in (m.group(1), m.group(2)) if v)
            out.append(Figure(page, i, m.group(0), vals))
    return out


def numbers(data: dict) -> list[float]:
    """Every number the sections hold: the row values and the numbers written in their labels and notes."""
    out: list[float] = []
    for sec in data["sections"].values():
        for r in sec["rows"]:
            for k in COLUMNS:
                v = r.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out.append(float(v))
                elif isinstance(v, str):
                    out += [float(x.replace(",", "")) for x in re.findall(NUM, v)]
    return out


def holds(value: str, known: list[float]) -> bool:
    """Some known number, or it in another unit (×1000, ÷1000, ×100 for a fraction), rounds to ``value``."""
    x = float(value.replace(",", ""))
    places = len(value.split(".")[1]) if "." in value else 0
    tol = 0.5 * 10**-places + 1e-9
    for v in known:
        for scaled in (v, v * 1000, v / 1000, v * 100, v / 1024, v * 1024):
            if abs(scaled - x) <= tol:
                return True
    return False


def unheld(pages: dict[str, str], data: dict, settings: dict[str, set[str]]) -> list[Figure]:
    """The figures of ``pages`` ({name: text}) that no section holds and that are not listed settings."""
    known = numbers(data)
    bad = []
    for page, text in pages.items():
        for f in figures(page, text):
            if f.text in settings.get(page, set()):
                continue
            if not all(holds(v, known) for v in f.values):
                bad.append(f)
    return bad

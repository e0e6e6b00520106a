"""The daemon soak (issue 15) as figures: tests/test_daemon_soak.py run at a size, its summary as rows.

4 MCP clients (the SDK's stdio client, each through its own ``aios-memory serve`` proxy) share one daemon
and run rounds of ``remember`` + ``recall`` concurrently; the test asserts no call fails, every recall
finds its own sentence, and the daemon's fds and RSS stay within its bounds. This bench runs that test
(it fails when the test fails) and reports latency and the daemon's resources at the start and at the end.

Run: python bench/bench_soak.py [--quick]
 or: python bench/run_all.py --only soak [--quick]
Sizes: 2,000 rounds per client (8,000 memories); --quick: 300 (the CI size); AIOS_BENCH_SOAK_CLIENT_ROUNDS
overrides (the issue's 5,000 per client takes about 25 minutes here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_rows  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# what the bench runs besides the product (run_all stamps these with the section)
CODE = ["tests/test_daemon_soak.py", "tests/conftest.py", "tests/s3_servers.py", "tests/test_soak.py"]


def run(quick: bool = False) -> list[dict]:
    rounds = int(os.environ.get("AIOS_BENCH_SOAK_CLIENT_ROUNDS", "300" if quick else "2000"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "soak.json"
        env = {
            **os.environ,
            "AIOS_MEMORY_DAEMON_SOAK_ROUNDS": str(rounds),
            "AIOS_MEMORY_DAEMON_SOAK_JSON": str(out),
        }
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_daemon_soak.py"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"tests/test_daemon_soak.py failed:\n{p.stdout[-3000:]}")
        s = json.loads(out.read_text())
    area = f"daemon soak, 4 clients x {rounds:,} rounds"
    st, en = s["start"], s["end"]
    win = f"start = rounds {st['rounds']}, end = rounds {en['rounds']}; each call as a client sees it, 3 others calling"
    rows = [
        {"area": area, "measure": "rounds/s, all clients (remember + recall each)", "ours": s["rounds_per_s"],
         "unit": "rounds/s", "note": f"{4 * rounds:,} memories written in {s['wall_s']:.0f} s; 0 failed calls"},
    ]  # fmt: skip
    for call in ("remember", "recall"):
        for q in ("p50", "p99"):
            rows.append(
                {"area": area, "measure": f"{call} {q}, end vs start", "ours": en[f"{call}_{q}_ms"],
                 "reference": st[f"{call}_{q}_ms"], "unit": "ms", "note": win}
            )  # fmt: skip
    rows += [
        {"area": area, "measure": "daemon fds other than store files, max, end vs start", "ours": en["other_fds_max"],
         "reference": st["other_fds_max"], "unit": "fds",
         "note": f"idle with clients connected: {s['idle'].get('other_fds')}; after they left: "
                 f"{s['after'].get('other_fds')}"},
        {"area": area, "measure": "daemon's open store files, max over the run", "ours": s["data_fds_max"],
         "unit": "fds", "note": "a Parquet file and its sidecar per live fragment; auto-compaction bounds it"},
        {"area": area, "measure": "daemon anonymous RSS (heap), median, end vs start", "ours": en["anon_median_mib"],
         "reference": st["anon_median_mib"], "unit": "MiB", "note": "the test's bound: +64 MiB"},
        {"area": area, "measure": "daemon file-backed RSS, median, end vs start", "ours": en["file_median_mib"],
         "reference": st["file_median_mib"], "unit": "MiB",
         "note": "libraries, weights, and the embedding sidecars searches map (1.5 KiB per memory)"},
    ]  # fmt: skip
    for r in rows:
        for k in ("reference", "ratio", "floor"):
            r.setdefault(k, None)
    return rows


if __name__ == "__main__":
    print_rows(run("--quick" in sys.argv))

"""How the manifest grows: every version names every fragment, so its size and the time to write and
read one bound how many fragments a table can have (docs/scale-out.md, "The manifest is what grows").

Run: python bench/bench_manifest.py [--quick]
 or: python bench/run_all.py --only manifest [--quick]
Sizes: 1,000, 10,000 and 100,000 fragments (--quick: 1,000 and 10,000). Each fragment is what a text
add writes today: a Parquet file and three sidecars (embedding, created_at, content digest), each with its
size and sha256. Write = ``Manifest.to_bytes`` (canonical JSON + its sha256) and the file written and
fsynced; read = the file read and ``Manifest.from_bytes`` (checksum, every path checked). Median of 3.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median_time, print_rows  # noqa: E402

from aios_memory.storage.manifest import Fragment, Manifest, TableState  # noqa: E402

SIDECARS = ("content.blake2b", "created_at.i64", "embedding.f32")


def fragment() -> Fragment:
    sums = [("parquet", secrets.token_hex(32)), *((s, secrets.token_hex(32)) for s in SIDECARS)]
    return Fragment(
        path=f"data/text/{secrets.token_hex(16)}.parquet",
        rows=30_000,
        nbytes=64 << 20,
        sidecars=SIDECARS,
        sidecar_nbytes=30_000 * (384 * 4 + 8 + 16),
        checksums=tuple(sums),
        derived=True,
    )


def manifest(n: int) -> Manifest:
    fp = {"provider": "minilm-l6-v2", "dim": 384, "weights": secrets.token_hex(32)}
    table = TableState("text", "minilm-l6-v2", 384, fp, [fragment() for _ in range(n)])
    return Manifest(version=n, created_at=time.time(), operation="append", tables={"text": table})


def run(quick: bool = False) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [1_000, 10_000] if quick else [1_000, 10_000, 100_000]:
            m = manifest(n)
            path = Path(tmp) / f"{n}.manifest.json"

            def write(m: Manifest = m, path: Path = path) -> None:
                raw = m.to_bytes()
                with open(path, "wb") as f:
                    f.write(raw)
                    f.flush()
                    os.fsync(f.fileno())

            def read(path: Path = path) -> None:
                Manifest.from_bytes(path.read_bytes(), str(path))

            w = median_time(write, 3)
            r = median_time(read, 3)
            size = path.stat().st_size
            area = f"manifest, {n:,} fragments"
            note = "canonical JSON + sha256, written and fsynced"
            rows += [
                {"area": area, "measure": "size per fragment", "ours": size / n, "unit": "bytes",
                 "note": f"{size / 2**20:.1f} MiB in all"},
                {"area": area, "measure": "write a version's manifest", "ours": w, "unit": "s", "note": note},
                {"area": area, "measure": "read a version's manifest (checksum and paths checked)", "ours": r,
                 "unit": "s", "note": "every writer and reader does this once per version it opens"},
            ]  # fmt: skip
    for r in rows:
        r.setdefault("reference", None)
        r.setdefault("ratio", None)
        r.setdefault("floor", None)
    return rows


if __name__ == "__main__":
    print_rows(run("--quick" in sys.argv))

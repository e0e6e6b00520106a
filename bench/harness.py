"""Timing helpers shared by the bench scripts (run them as ``python bench/bench_*.py``)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# scikit-image photos the benches embed (real photographs shipped by the package)
SKIMAGE_NAMES = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "horse",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
]

# transformers' CLIPConfig defaults are ViT-B/32 (vision: hidden 768, 12 layers, 12 heads, patch 32, 224 px;
# text: hidden 512, 12 layers, 8 heads, 77 positions; quick_gelu); clip_checkpoint checks it
CLIP_B32 = {"projection_dim": 512}


def clip_checkpoint(hf_dir: Path, out_dir: Path | None = None, seed: int = 0) -> Path | None:
    """The benches' CLIP ViT-B/32 checkpoint: ``tests/test_clip_model.py``'s ``make_clip_folder`` (seeded
    weights redrawn at unit scale, so that distinct photos get distinct vectors: under transformers' own
    init 16 photos have mean pairwise cosine 0.86, max 0.997), saved by transformers with CLIP's tokenizer
    files in ``hf_dir``, then converted by our converter into ``out_dir``; returns our weights file."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from test_clip_model import make_clip_folder

    model = make_clip_folder(Path(hf_dir), CLIP_B32, seed)
    v, t = model.config.vision_config, model.config.text_config
    got = (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size, t.hidden_size, t.num_hidden_layers)
    assert got == (768, 12, 32, 224, 512, 12), f"not ViT-B/32: {got}"
    del model
    if out_dir is None:
        return None
    from aios_memory_converters.clip import convert_clip

    return convert_clip(Path(hf_dir), Path(out_dir))


def full_load(provider_cls: Any, directory: Path) -> Any:
    """A fresh provider's ``_load`` and, for CLIP, both towers' deferred hashes: every tensor checked."""
    prov = provider_cls(directory)
    prov._load()
    if hasattr(prov, "_tower"):
        prov._tower("image")
        prov._tower("text")
    return prov


def median_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function over ``repeats`` rounds, the sides taking turns within every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def hash_floor(path: Path, repeats: int, threads: int = 2, select=None, algo: str | None = None) -> float:
    """Seconds to hash the tensors' bytes (all, or those ``select(name)`` picks) already in memory with the
    file's own digest (or ``algo``), split over ``threads`` like the loader does: the least a load that
    checks every hash can take."""
    from concurrent.futures import ThreadPoolExecutor

    from aios_memory import digests
    from aios_memory.weights import read_weights

    wf = read_weights(path, verify=False)
    algo = algo or wf.algo
    blobs = [bytes(t.buffer) for n, t in wf.tensors.items() if select is None or select(n)]
    blobs.sort(key=len, reverse=True)
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):
            t = time.perf_counter()
            list(pool.map(lambda b: digests.digest(algo, b), blobs))
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def read_floor(path: Path, repeats: int) -> float:
    """Seconds to read the whole file once from the page cache into a preallocated buffer."""
    buf = bytearray(path.stat().st_size)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            view, n = memoryview(buf), 0
            while n < len(buf):
                got = f.readinto(view[n:])
                if not got:
                    break
                n += got
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])  # the first read warms the cache


# A fresh process: import torch (timed), then one kind of work; prints its times and VmRSS / VmHWM (MiB).
CHILD = """
import json, os, sys, time
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
base = rss("VmRSS:")
kind, arg = sys.argv[1], sys.argv[2]
if kind == "ours":
    from pathlib import Path
    from aios_memory import MemoryStore
    store = MemoryStore(sys.argv[3])
    store.add(Path(arg) if arg.endswith(".png") else arg)
elif kind == "provider":  # the model alone, no store (pyarrow, duckdb): what the weights cost
    from pathlib import Path
    from aios_memory.plugins import get_provider
    p = get_provider(sys.argv[3])
    p.embed_batch([Path(a).read_bytes() if a.endswith(".png") else a for a in [arg, *sys.argv[4:]]])
elif kind == "noweights":  # what a store + provider process holds besides weights and activations
    import tempfile
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer
    with tempfile.TemporaryDirectory() as tmp:  # a store writes and reads Parquet: its reader/writer state
        pq.write_table(pa.table({"a": [1.0]}), tmp + "/t.parquet")
        pq.read_table(tmp + "/t.parquet")
    if arg != "-":  # CLIP embeds an image without its tokenizer
        Tokenizer.from_file(arg)
    x = torch.randn(1, 12, 16, 64)
    torch.nn.functional.scaled_dot_product_attention(x, x, x)
    torch.nn.functional.layer_norm(torch.nn.functional.gelu(torch.randn(16, 384) @ torch.randn(384, 384)), (384,))
elif kind == "clip-hf":  # from_pretrained + embed the images sys.argv[3:]
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel
    m = CLIPModel.from_pretrained(arg).eval()
    with torch.inference_mode():
        images = [Image.open(a) for a in sys.argv[3:]]
        px = CLIPImageProcessorPil()(images=images, return_tensors="pt")["pixel_values"]
        m.get_image_features(pixel_values=px)
elif kind == "text-hf":
    from transformers import AutoModel, AutoTokenizer
    m = AutoModel.from_pretrained(arg).eval()
    tok = AutoTokenizer.from_pretrained(arg)
    with torch.inference_mode():
        m(**tok([sys.argv[3]], return_tensors="pt"))
t2 = time.perf_counter()
print(json.dumps({"import_torch": t1 - t0, "rest": t2 - t1, "base_mb": base, "peak_mb": rss("VmHWM:")}))
"""


def child(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """One fresh ``CHILD`` process; ``{uniq}`` in an argument becomes a new value per process (a store
    path: every run adds to a fresh store; a repeat add to the same store is a duplicate, no model work)."""
    uniq = str(time.time_ns())
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *(a.replace("{uniq}", uniq) for a in args)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def children(args: list[str], env: dict[str, str], repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` fresh ``CHILD`` processes, after one uncounted warm-up run."""
    child(args, env)  # warm-up, not counted: writes the bytecode caches and warms the page cache
    runs = [child(args, env) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls), in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_rows(rows: list[dict], footer: str = "") -> None:
    """The rows every bench's ``run()`` returns, as one plain-text table."""

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}"

    wa = max([4, *(len(r["area"]) for r in rows)])
    wm = max([7, *(len(r["measure"]) for r in rows)])
    print(
        f"| {'area':<{wa}} | {'measure':<{wm}} | {'ours':>8} | {'ref':>8} | {'ratio':>6} | {'floor':>8} | unit | note"
    )
    print("|" + "|".join("-" * w for w in (wa + 2, wm + 2, 10, 10, 8, 10, 6, 6)) + "|")
    for r in rows:
        print(
            f"| {r['area']:<{wa}} | {r['measure']:<{wm}} | {f(r['ours']):>8} | {f(r['reference']):>8} | "
            f"{f(r['ratio']):>6} | {f(r['floor']):>8} | {r['unit']:<4} | {r['note']}"
        )
    if footer:
        print("\n" + footer)


def cli(run: Callable[[bool], list[dict]], quick_help: str, footer: str) -> None:
    """``python bench/bench_x.py [--quick]``: the machine line, then ``run(quick)``'s rows as a table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=quick_help)
    quick = ap.parse_args().quick
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_rows(run(quick), footer)

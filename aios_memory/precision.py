"""Reduced-precision helpers the model plugins share (torch is imported by the callers' model code)."""

from __future__ import annotations

from typing import Any


def quantize_linear_int8(model: Any) -> None:
    """Every ``nn.Linear`` in place -> dynamic int8 (fbgemm/oneDNN VNNI kernels): weights int8 per output
    channel, each call's activations quantized per tensor on the fly, int32 sums rescaled to float32.
    ``torch.ao.quantization.quantize_dynamic`` is deprecated (torchao replaces it) but still works in
    torch 2.13; its warnings are silenced here."""
    import warnings

    import torch
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)

"""Reduced-precision helpers the model plugins share. Imported only by model code, which imports torch anyway
(never by the core or a plugin package's ``__init__``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

INT_MM_MIN_ROWS = 17  # torch._int_mm needs M > 16 (and K, N multiples of 8); fewer rows are zero-padded
QUANT_BLOCK_BYTES = 4 << 20  # activations are quantized in row blocks of about this many float32 bytes


def quantize_linear_int8(model: nn.Module) -> None:
    """Every ``nn.Linear`` in place -> dynamic int8 (fbgemm/oneDNN VNNI kernels): weights int8 per output
    channel, each call's activations quantized per tensor on the fly, int32 sums rescaled to float32.
    ``torch.ao.quantization.quantize_dynamic`` is deprecated (torchao replaces it) but still works in
    torch 2.13; its warnings are silenced here."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


class Int8TokenLinear(nn.Module):
    """``nn.Linear`` with int8 x int8 -> int32 GEMM (``torch._int_mm``, VNNI): weights symmetric int8 per
    output channel, quantized once; activations asymmetric int8 per row (token), quantized on every call,
    so one outlier token or a padded row never coarsens the others, and a one-signed outlier channel (as
    BERT's residual stream has) spends all 256 levels on the range it uses.

    Per row r: x ~ s_r * q + m_r, with s_r = (max_r - min_r) / 255, m_r = min_r + 128 s_r, q in [-128, 127];
    W ~ sw_n * Wq. Then y = x W^T + b ~ (s_r * (q Wq^T)[r, n] + m_r * sum_k Wq[n, k]) * sw_n + b_n."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        N, K = w.shape
        assert K % 8 == 0 and N % 8 == 0, f"torch._int_mm needs K and N multiples of 8, got {K}, {N}"
        self.in_features, self.out_features = K, N
        sw = w.abs().amax(1).clamp(min=1e-12) / 127  # (N,)
        wq = torch.round(w / sw[:, None]).clamp_(-127, 127).to(torch.int8)  # (N, K)
        self.register_buffer("weight_t", wq.t().contiguous())  # (K, N) int8, the GEMM's right operand
        self.register_buffer("weight_scale", sw)  # (N,)
        self.register_buffer("weight_sum_int", wq.sum(1).float())  # (N,) row sums of the int8 weights
        b = linear.bias.detach().float() if linear.bias is not None else torch.zeros(N)
        self.register_buffer("bias", b)  # (N,)
        self.register_buffer("minus_128", torch.tensor(-128.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)  # (M, K)
        M = x.shape[0]
        lo = x.amin(1, keepdim=True)  # (M, 1)
        inv = (x.amax(1, keepdim=True) - lo).clamp_(min=1e-12).reciprocal_().mul_(255)  # (M, 1): 1 / s
        shift = torch.addcmul(self.minus_128, lo, inv, value=-1)  # (M, 1): -m / s
        # x * inv + shift = (x - m) / s lies in [-128, 127]: one fused multiply-add, rounded in place, cast
        rows = max(1, QUANT_BLOCK_BYTES // (4 * self.in_features))
        if M <= rows:
            q = torch.addcmul(shift, x, inv).round_().to(torch.int8)  # (M, K)
        else:  # in row blocks of ~4 MiB: the float temporary stays in cache, no large fresh buffer per call
            q = torch.empty((M, self.in_features), dtype=torch.int8)
            tmp = torch.empty((rows, self.in_features))
            for i in range(0, M, rows):
                j = min(i + rows, M)
                q[i:j] = torch.addcmul(shift[i:j], x[i:j], inv[i:j], out=tmp[: j - i]).round_()
        if M < INT_MM_MIN_ROWS:
            q = F.pad(q, (0, 0, 0, INT_MM_MIN_ROWS - M))
        acc = torch._int_mm(q, self.weight_t)[:M]  # (M, N) exact int32 sums
        # int32 -> float32 in place (same size, each element read before it is written): no new buffer
        y = acc.view(torch.float32).copy_(acc)  # (M, N)
        y.addcmul_(shift, self.weight_sum_int, value=-1).div_(inv)  # (acc + m/s * sum_k Wq[n, k]) * s
        y = torch.addcmul(self.bias, y, self.weight_scale, out=y)  # * sw + b
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-token"


class Bf16Linear(nn.Module):
    """``nn.Linear`` computed in bfloat16 between float32 neighbours: for the one layer whose int8 error
    would dominate (input and output stay float32)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).float()


def quantize_linear_int8_per_token(
    model: nn.Module, keep_bf16: Callable[[str], bool] = lambda name: False
) -> None:
    """Every ``nn.Linear`` in place -> ``Int8TokenLinear``, except those whose qualified name ``keep_bf16``
    accepts, which become ``Bf16Linear``."""
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, Bf16Linear(child) if keep_bf16(name) else Int8TokenLinear(child))

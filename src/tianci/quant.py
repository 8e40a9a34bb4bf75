"""Int8 weight-only quantization: a faster, smaller model for sampling (never for training).

Why: decoding one token reads every weight matrix once to multiply it by a single row. At the
tutorial's final size (6 x 384, ~52 MB of fp32 matrices) that is memory-bound: on this project's
2-core CPU the 25 matrix-vector products alone take ~5.4 ms per token. Stored as int8 with one
scale per output row, the same matrices are 13 MB (they fit in the L3 cache) and PyTorch's
int8-weight kernel (`torch._weight_int8pack_mm`, the one gpt-fast uses) runs them in ~1.3 ms.

What changes: each weight row w becomes round(w / s) * s with s = max|w| / 127, and activations
entering a quantized Linear are rounded to bfloat16 (the kernel's fast input type). The effect on
a trained model's validation loss is measured by `tianci bench` / tests, not assumed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from .errors import TianciError

QUANT_CHOICES = ("none", "int8")


def _int8_kernel_ok(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + b with q int8 (out, in) and one fp scale per output row."""

    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(act_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_dtype = act_dtype

    def dequantized(self) -> torch.Tensor:
        return self.q.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.act_dtype)  # (N, in)
        if _int8_kernel_ok(x.device):
            y = torch._weight_int8pack_mm(x2, self.q, self.scale.to(self.act_dtype))
        else:  # portable path (CUDA, MPS, old torch): dequantize on the fly
            y = F.linear(x2, self.q.to(self.act_dtype)) * self.scale.to(self.act_dtype)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace every nn.Linear of an inference model by an Int8Linear, in place; returns the model.
    Tied embeddings stay tied in spirit: the token embedding keeps full precision for lookups and
    the output projection gets its own int8 copy."""
    if model.training:
        raise TianciError("quantize_int8 is for inference: call model.eval() first (int8 weights cannot train)")
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, lin in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(lin, act_dtype).to(lin.weight.device))
    return model


def apply_quantization(model: nn.Module, kind: str) -> nn.Module:
    """`--quantize` for sample / compose / serve / bench: 'none' leaves the model as trained."""
    if kind not in QUANT_CHOICES:
        raise TianciError(f"--quantize {kind!r}: expected one of {', '.join(QUANT_CHOICES)}")
    if kind == "int8":
        quantize_int8(model)
    return model

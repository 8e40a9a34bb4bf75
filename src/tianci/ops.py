"""Two small ops of the training step as single autograd functions: RMSNorm and ReLU^2.

Why: on a CPU at ci-cpu's shapes (B*T = 768 rows, C = 128, one thread) a step is a few hundred small
ops, each paying its own pass over memory and its own dispatch. PyTorch composes RMSNorm from pow,
mean, add, rsqrt and two multiplies, and differentiates each of them (~12 passes forward and
backward: 0.64 ms per norm, nine norms a step, measured on a 2-core Xeon); ReLU^2 as relu + square
is four ops with a threshold backward. Written as one function each, with the backward by hand, they
make fewer passes and save no intermediate the backward can recompute cheaply (docs/speed.md).

Both compute the same function as the composed ops (tests/test_ops.py checks values and gradients
against them, and gradcheck in float64). The model uses them only when a gradient is being taken and
nothing is being compiled: inference and torch.compile keep PyTorch's own ops.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F


def use_fused(x: torch.Tensor) -> bool:
    """Training in eager mode: where the hand-written backward pays."""
    return torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling()


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))  # (..., 1)
        xhat = x * rstd
        ctx.save_for_backward(xhat, weight, rstd)  # xhat, not x: the backward needs no second x * rstd
        return xhat * weight

    @staticmethod
    def backward(ctx, dy):
        xhat, weight, rstd = ctx.saved_tensors
        g = dy * weight  # d loss / d xhat
        # d xhat / d x = rstd * (I - xhat xhat^T / C): one mean over the row
        dx = torch.addcmul(g, xhat, (g * xhat).mean(-1, keepdim=True), value=-1).mul_(rstd)
        dw = (dy * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters, same checkpoints, eps=None: the input dtype's machine epsilon) whose
    training forward is one autograd function."""

    def forward(self, x):
        if not use_fused(x) or self.weight is None or x.dtype != self.weight.dtype:
            return super().forward(x)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _RMSNormFn.apply(x, self.weight, eps)


class _ReLU2Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        r = h.clamp_min(0)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, dy):
        (r,) = ctx.saved_tensors
        return (r + r).mul_(dy)  # d r^2 / dh = 2r where h > 0, and r = 0 elsewhere


def relu2(h: torch.Tensor) -> torch.Tensor:
    """ReLU squared (modded-nanogpt)."""
    return _ReLU2Fn.apply(h) if use_fused(h) else F.relu(h).square()

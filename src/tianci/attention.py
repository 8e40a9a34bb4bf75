"""Self-attention, in the two implementations that compute the same function (tianci.model builds
them): the tutorial's readable loop (`LoopAttention`, one `Head` module per head) and a fused QKV
projection + `F.scaled_dot_product_attention` (`FusedAttention`), each with the eager KV-cache path
and the fixed-shape decoding step (GPT.decode_step), RoPE and QK-norm.

`ve` (value_embeds=True, see GPT): a (B, T, C) lookup of the input tokens added to the values v
before they are cached, so the cache holds exactly the values the full forward uses.
Shapes: B = batch, T = time (tokens), C = n_embd, nh = heads, hs = head size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from .config import GPTConfig


def _sdpa(q, k, v, **kw) -> torch.Tensor:
    """F.scaled_dot_product_attention, in fp32 when training under bf16/fp16 autocast on the CPU.

    Why: torch's CPU flash-attention backward is several times slower in bf16 than in fp32 at short
    blocks (ci-cpu's shape, B=12 nh=4 T=64 hs=32, one thread, Intel Xeon with AMX: forward+backward
    7.6 ms in bf16 vs 1.6 ms in fp32, per layer; a third of the bf16 step). q, k, v are small next to
    the matmul weights and activations, so the casts cost far less than they save. Inference (no
    gradient) keeps the autocast dtype: the bf16 forward alone is not slower."""
    if (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
            and torch.is_grad_enabled() and q.requires_grad):
        # autocast would cast fp32 inputs straight back: SDPA is on the CPU's lower-precision list
        with torch.autocast(device_type="cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _rope(x: torch.Tensor, pos0) -> torch.Tensor:
    """Rotary position embedding on (..., T, hs): rotate pairs of channels (0,1), (2,3), ... by
    position-dependent angles, so q.k depends only on the distance between tokens.

    Each pair is a complex number and the rotation one complex multiply, in fp32: one vectorised
    kernel forward and backward, 5x faster on a CPU (fwd+bwd, ci-cpu's q, bf16, one thread: 0.45 vs
    2.25 ms) than the same rotation written with strided slices, four multiplies and a stack."""
    T, hs = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hs, 2, device=x.device, dtype=torch.float32) / hs))
    # pos0: an int, or per-row positions shaped to broadcast over x's leading dims (GPT.decode_step)
    t = torch.arange(T, device=x.device, dtype=torch.float32) + pos0
    freqs = t[..., None] * inv_freq  # (T, hs/2), or (B, ..., T, hs/2) per row
    wide = torch.promote_types(x.dtype, torch.float32)  # bf16 computes in fp32; fp64 (gradchecks) stays fp64
    if torch.compiler.is_compiling():
        # inductor has no complex kernels but fuses the real form into one loop (the compiled decoder)
        cos, sin = freqs.cos(), freqs.sin()
        x1, x2 = x[..., 0::2].to(wide), x[..., 1::2].to(wide)
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)
    rot = torch.polar(torch.ones_like(freqs), freqs)  # cos + i sin
    pairs = torch.view_as_complex(x.to(wide).unflatten(-1, (hs // 2, 2)))  # (..., T, hs/2)
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)


def _causal_mask(T: int, L: int, pos0: int, device) -> torch.Tensor:
    """(T, L) boolean: query i (absolute position pos0+i) may see key j iff j <= pos0+i."""
    return torch.ones(T, L, dtype=torch.bool, device=device).tril(diagonal=pos0)


def _fixed_attention(q, k, v, k_cache, v_cache, pos):
    """The fixed-shape decoding step's attention (GPT.decode_step): q, k, v (B, [nh,] 1, hs) of one
    new token per row, caches (B, [nh,] L, hs), pos (B,) each row's position. Store each row's key
    and value at its own position, attend over the whole cache, mask what lies past the row: every
    shape is fixed (torch.compile makes one graph) and rows at different positions share one step."""
    rows = torch.arange(q.size(0), device=q.device)
    k_cache[rows, ..., pos, :] = k[..., 0, :]  # index_put_: an in-place store, also when compiled
    v_cache[rows, ..., pos, :] = v[..., 0, :]
    # The tutorial's formula, written out: for one query over a short cache, compiled elementwise
    # code beats the fused SDPA kernel's per-call setup (~0.1 ms per layer on this CPU).
    wei = (q @ k_cache.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, [nh,] 1, L)
    future = torch.arange(k_cache.size(-2), device=q.device) > pos.view(-1, *[1] * (q.dim() - 1))
    return wei.masked_fill(future, float("-inf")).softmax(dim=-1) @ v_cache  # (B, [nh,] 1, hs)


def _row_positions(pos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) positions shaped (B, 1, ..., 1) to broadcast over x's (B, ..., T) leading dims in _rope."""
    return pos.view(-1, *[1] * (x.dim() - 2))


def _qk_prepare(q, k, cfg: GPTConfig, pos0: int):
    if cfg.qk_norm:  # normalise queries and keys so attention logits cannot blow up
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
    if cfg.pos == "rope":
        q, k = _rope(q, pos0), _rope(k, pos0)
    return q, k


class Head(nn.Module):
    """One head of self-attention, written out as in the tutorial."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg, hs = cfg, cfg.head_size
        self.key = nn.Linear(cfg.n_embd, hs, bias=False)
        self.query = nn.Linear(cfg.n_embd, hs, bias=False)
        self.value = nn.Linear(cfg.n_embd, hs, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, kv=None, pos0=0, fixed: bool = False, ve=None):
        B, T, C = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, hs) each
        if ve is not None:  # this head's slice of the value embedding (B, T, hs)
            v = v + ve
        if fixed:  # GPT.decode_step: one token per row, pos0 (B,) each row's position
            q, k = _qk_prepare(q, k, self.cfg, _row_positions(pos0, q))
            return _fixed_attention(q, k, v, kv[0], kv[1], pos0)
        q, k = _qk_prepare(q, k, self.cfg, pos0)
        if kv is not None:  # kv: this head's (B, max_len, hs) cache views
            kv[0][:, pos0:pos0 + T] = k
            kv[1][:, pos0:pos0 + T] = v
            k, v = kv[0][:, :pos0 + T], kv[1][:, :pos0 + T]
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, L): how much each token attends to each
        wei = wei.masked_fill(~_causal_mask(T, k.shape[1], pos0, x.device), float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ v  # (B, T, hs)


class LoopAttention(nn.Module):
    """Multi-head attention as the tutorial writes it: run each Head, concatenate (one head when attn="single")."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = nn.ModuleList(Head(cfg) for _ in range(cfg.heads))
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias) if cfg.proj else None
        self.dropout = nn.Dropout(cfg.dropout) if cfg.proj else nn.Identity()

    def forward(self, x, kv=None, pos0=0, fixed: bool = False, ve=None):
        hs = x.size(-1) // len(self.heads)
        out = torch.cat([h(x, None if kv is None else (kv[0][:, i], kv[1][:, i]), pos0, fixed,
                           None if ve is None else ve[..., i * hs:(i + 1) * hs])
                         for i, h in enumerate(self.heads)], dim=-1)  # (B, T, C)
        if self.c_proj is not None:
            out = self.c_proj(out)
        return self.dropout(out)


class FusedAttention(nn.Module):
    """The same function with one QKV matmul and PyTorch's fused scaled_dot_product_attention."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias) if cfg.proj else None
        self.dropout = nn.Dropout(cfg.dropout) if cfg.proj else nn.Identity()

    def _qkv(self, x, ve):
        """(B, T, C) -> q, k, v (B, nh, T, hs); ve (B, T, C) or None is added to the values."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        if ve is not None:
            v = v + ve
        return tuple(t.view(B, T, self.cfg.heads, C // self.cfg.heads).transpose(1, 2) for t in (q, k, v))

    def forward(self, x, kv=None, pos0=0, fixed: bool = False, ve=None):
        """x (B, T, C); kv: this layer's (k, v) caches (B, nh, max_len, hs) or None; pos0: where x starts.
        fixed=False: any T, attending over the cache up to pos0+T (training, prefill, the eager cache).
        fixed=True (GPT.decode_step): see `_fixed_step`. ve: this layer's value embedding or None."""
        if fixed:
            return self._fixed_step(x, kv[0], kv[1], pos0, ve)
        B, T, C = x.shape
        q, k, v = self._qkv(x, ve)
        q, k = _qk_prepare(q, k, self.cfg, pos0)
        if kv is not None:  # kv: this layer's (B, nh, max_len, hs) caches
            kv[0][:, :, pos0:pos0 + T] = k
            kv[1][:, :, pos0:pos0 + T] = v
            k, v = kv[0][:, :, :pos0 + T], kv[1][:, :, :pos0 + T]
        p = self.cfg.dropout if self.training else 0.0
        if pos0 == 0 or T == 1:  # plain causal (prefill) or one new query seeing every cached key
            y = _sdpa(q, k, v, dropout_p=p, is_causal=T > 1)
        else:
            mask = _causal_mask(T, k.shape[2], pos0, x.device)
            y = _sdpa(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        if self.c_proj is not None:
            y = self.c_proj(y)
        return self.dropout(y)

    def _fixed_step(self, x, k_cache, v_cache, pos, ve=None):
        """One new token per row, row b at position pos[b] ((B,) long tensor), over the whole
        preallocated cache (see _fixed_attention). Eval mode only."""
        B, T, C = x.shape  # T == 1
        q, k, v = self._qkv(x, ve)  # (B, nh, 1, hs)
        q, k = _qk_prepare(q, k, self.cfg, _row_positions(pos, q))
        y = _fixed_attention(q, k, v, k_cache, v_cache, pos).transpose(1, 2).reshape(B, T, C)  # (B, 1, C)
        return self.c_proj(y) if self.c_proj is not None else y

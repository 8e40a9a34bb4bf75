"""An optional compiled decoding step (`tianci sample --compile`, `tianci bench`).

Eager decoding of one token runs a few hundred small PyTorch ops; on a GPU each is a kernel launch,
so a small model decodes at the speed of the launches, not of the GPU. GPT.decode_step is written
with fixed shapes (the whole preallocated cache with a mask, the position as a tensor), so
torch.compile turns it into one graph; on CUDA, mode="reduce-overhead" also records it as a CUDA
graph and replays it with one launch. The KV cache is held as buffers of a small module (as in
gpt-fast) because CUDA graphs may only write in place into static tensors.

The caller owns the compiled steps: a `CompiledDecoder(model)` keeps one step (and its cache) per
batch size, compiled on first use, and is passed to `generate(..., decoder=)` / `stream(...,
decoder=)`, so the compile cost (seconds to a minute) is paid once for as long as the caller keeps
it. Nothing is stored on the model. Not thread-safe (each step's cache serves one decode at a time):
the server does not use it.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

from . import formpos


class DecodeStep(nn.Module):
    """Holds a KVCache's tensors as buffers and runs model.decode_step on them."""

    def __init__(self, model, batch_size: int):
        super().__init__()
        self.model = model
        self.cache = model.new_kv_cache(batch_size)
        # One buffer per layer, each a view of the cache (same storage, not a copy): torch.compile
        # then writes each new key/value in place; a write into a slice of one big buffer made it
        # copy the whole cache every step (measured: time per token grew with block_size).
        self.n_layer = self.cache.k.size(0)
        for i in range(self.n_layer):
            self.register_buffer(f"k{i}", self.cache.k[i], persistent=False)
            self.register_buffer(f"v{i}", self.cache.v[i], persistent=False)

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, form: torch.Tensor | None = None) -> torch.Tensor:
        ks = [getattr(self, f"k{i}") for i in range(self.n_layer)]
        vs = [getattr(self, f"v{i}") for i in range(self.n_layer)]
        return self.model.decode_step(idx, pos, ks, vs, form)


class CompiledStep:
    """One compiled decoding step for one batch size and the KVCache it writes into.

    step(idx (B, 1), form=None) -> logits (B, V) for the tokens at the cache's position, then advances
    the cache by one; prefill into `cache` with the eager forward (model(ctx, kv_cache=step.cache)).
    A form model's step always gets a (B, 1, 2) form (unknown when none is given: one graph)."""

    def __init__(self, fn, cache, form: bool = False):
        self.fn = fn
        self.cache = cache
        self.form = form

    def __call__(self, idx: torch.Tensor, form: torch.Tensor | None = None) -> torch.Tensor:
        pos = torch.full((idx.size(0),), self.cache.pos, device=idx.device)  # every row at one position
        if self.form:  # contiguous: the graph was compiled for a dense (B, 1, 2)
            form = (formpos.unknown(idx.size(0), 1, device=idx.device) if form is None else form).contiguous()
        logits = self.fn(idx, pos, form)
        self.cache.advance(1)
        return logits


def can_compile(model) -> bool:
    cfg = getattr(model, "config", None)
    return hasattr(model, "decode_step") and cfg is not None and cfg.attn_impl == "sdpa" and cfg.attn != "none"


class CompiledDecoder:
    """The compiled decoding steps of one model, one per batch size, owned by whoever decodes."""

    def __init__(self, model):
        self.model = model
        self.steps: dict[int, CompiledStep | None] = {}  # None: tried, unavailable (warned once)

    def available(self) -> bool:
        return can_compile(self.model)

    def step(self, batch_size: int) -> CompiledStep | None:
        """This batch size's step, compiled on first use; None if the model cannot use it (loop
        attention, no attention) or compilation fails (a warning says why)."""
        if batch_size not in self.steps:
            self.steps[batch_size] = _compile(self.model, batch_size) if self.available() else None
        return self.steps[batch_size]


def forced_cpu_capability() -> str:
    """ATEN_CPU_CAPABILITY when it is set ('' otherwise). With it set below the host's, torch 2.13's
    inductor miscompiles on the CPU (measured on an AVX-512 Zen 5: =avx2 wrote a wrong in-place slice
    after a fused reduction, =default generated C++ that does not build), so the compiled step is not
    trusted then: decoding stays eager, with a warning."""
    return os.environ.get("ATEN_CPU_CAPABILITY", "")


def _compile(model, batch_size: int) -> CompiledStep | None:
    try:
        mod = DecodeStep(model, batch_size)
        if mod.cache.k.device.type == "cpu" and forced_cpu_capability():
            raise RuntimeError(f"ATEN_CPU_CAPABILITY={forced_cpu_capability()} is set, and inductor's CPU code "
                               "is not trusted with a forced capability")
        mode = "reduce-overhead" if mod.cache.k.device.type == "cuda" else None  # CUDA graphs on a GPU
        fn = torch.compile(mod, fullgraph=True, dynamic=False, mode=mode)
        dev = mod.cache.k.device
        form = formpos.unknown(batch_size, 1, device=dev).contiguous() if formpos.uses_form(model) else None
        with torch.no_grad():
            for i in range(3):  # compile now (errors surface here, not mid-poem); CUDA graphs record on the 3rd
                fn(torch.zeros((batch_size, 1), dtype=torch.long, device=dev), torch.full((batch_size,), i, device=dev),
                   form)
    except Exception as e:  # an optimisation, never a requirement
        print(f"warning: compiled decoding unavailable ({type(e).__name__}: {e}); decoding eagerly",
              file=sys.stderr)
        return None
    return CompiledStep(fn, mod.cache, form is not None)

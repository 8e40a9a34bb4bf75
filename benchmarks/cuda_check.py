"""Correctness of the fast paths on a CUDA GPU (the test suite runs on CPU; this is its GPU twin).

    PYTHONPATH=src python benchmarks/cuda_check.py

Checks, each printed PASS/FAIL with the measured difference:
- loop attention == fused QKV + SDPA (flash) with the same weights, fp32;
- KV-cache decoding logits == full forward logits, fp32 and bf16 autocast;
- chunked linear+cross-entropy == F.cross_entropy in value and gradient under bf16 autocast;
- int8 weights (portable dequantize path on CUDA) stay close to fp32;
- one optimizer step with Muon (bf16 Newton-Schulz on CUDA) and with fused AdamW runs and lowers the loss;
- the compiled decoding step (tianci.decode; CUDA graphs) gives the eager path's greedy tokens;
- torch.compile of the model gives the same loss as eager.
Exit status 1 if any check fails.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch.nn import functional as F

from tianci.config import GPTConfig, TrainConfig
from tianci.losses import linear_cross_entropy
from tianci.interop.arch import convert_attention_state
from tianci.model import GPT
from tianci.optim import build_optimizers
from tianci.quant import quantize_int8

FAILED = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def main(argv: list[str]) -> int:
    small = "--small" in argv  # a quick dry run of the script itself on the CPU
    if not torch.cuda.is_available() and not small:
        print("no CUDA device: nothing to check (--small runs a small version on the CPU)")
        return 0
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}")
    torch.backends.cuda.matmul.allow_tf32 = False  # exact comparisons first
    cfg = GPTConfig(vocab_size=6104, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0)
    if small:
        cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    torch.manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (4, 64 if small else cfg.block_size), device=dev)
    tgt = torch.randint(0, cfg.vocab_size, idx.shape, device=dev)

    fused = GPT(copy.deepcopy(cfg)).to(dev).eval()
    loop = GPT(GPTConfig(**{**cfg.__dict__, "attn_impl": "loop"})).to(dev).eval()
    loop.load_state_dict(convert_attention_state(fused.state_dict(), cfg, "loop"))
    with torch.no_grad():
        a, b = fused(idx)[0], loop(idx)[0]
    check("loop == sdpa attention (fp32)", rel(a, b) < 1e-4, f"relative difference {rel(a, b):.2e}")

    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            full = fused(idx[:1, :64])[0]
            cache = fused.new_kv_cache(1)
            steps = [fused(idx[:1, :32], kv_cache=cache)[0]]
            for t in range(32, 64):
                steps.append(fused(idx[:1, t:t + 1], kv_cache=cache)[0])
            got = torch.cat(steps, dim=1)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        check(f"KV cache == full forward ({dtype})", rel(got, full) < tol, f"relative difference {rel(got, full):.2e}")

    N, C, V = (2048, cfg.n_embd, cfg.vocab_size) if not small else (64, cfg.n_embd, cfg.vocab_size)
    h = torch.randn(N, C, device=dev, requires_grad=True)
    w = torch.randn(V, C, device=dev, requires_grad=True)
    t = torch.randint(0, V, (N,), device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        l1 = linear_cross_entropy(h, w, t)
    g1 = torch.autograd.grad(l1, (h, w))
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        l2 = F.cross_entropy((h @ w.t()).float(), t)
    g2 = torch.autograd.grad(l2, (h, w))
    d = max(abs((l1 - l2).item()) / l2.item(), rel(g1[0], g2[0]), rel(g1[1], g2[1]))
    check("chunked CE == F.cross_entropy (bf16 autocast), value and grads", d < 1e-2, f"max relative diff {d:.2e}")

    q = quantize_int8(copy.deepcopy(fused))
    with torch.no_grad():
        lq, lf = q(idx)[0], fused(idx)[0]
    check("int8 weights close to fp32 (CUDA dequantize path)", rel(lq, lf) < 2e-2, f"relative difference {rel(lq, lf):.2e}")

    for opt in ("adamw", "muon"):
        m = GPT(copy.deepcopy(cfg)).to(dev).train()
        opts = build_optimizers(m, TrainConfig(optimizer=opt, learning_rate=1e-3), dev.type)
        losses = []
        for _ in range(5):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                _, loss = m(idx, tgt, return_logits=False)
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            losses.append(loss.item())
        check(f"{opt} steps lower the loss on one batch (bf16)", losses[-1] < losses[0],
              f"{losses[0]:.3f} -> {losses[-1]:.3f}")

    from tianci.decode import CompiledDecoder
    from tianci.generate import generate
    try:
        prompt = idx[:2, :8]
        eager = torch.stack(list(generate(fused, prompt, 40, temperature=0)), 1)
        comp = torch.stack(list(generate(fused, prompt, 40, temperature=0, decoder=CompiledDecoder(fused))), 1)
        same = float((eager == comp).float().mean())
        check("compiled decode step (CUDA graphs) == eager greedy tokens", same > 0.95,
              f"{same:.1%} of 80 tokens equal")
    except Exception as e:
        check("compiled decode step", False, f"{type(e).__name__}: {e}")

    m = GPT(copy.deepcopy(cfg)).to(dev).train()
    try:
        cm = torch.compile(m)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            lc = cm(idx, tgt, return_logits=False)[1].item()
            le = m(idx, tgt, return_logits=False)[1].item()
        check("torch.compile loss == eager loss (bf16)", abs(lc - le) < 1e-2, f"{lc:.4f} vs {le:.4f}")
    except Exception as e:  # report, do not hide
        check("torch.compile", False, f"{type(e).__name__}: {e}")
    print(f"{len(FAILED)} failed" if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

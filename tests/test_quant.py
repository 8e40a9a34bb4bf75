"""Int8 weight-only quantization (tianci.quant): what `--quantize int8` changes and what it must not."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from tianci import quant
from tianci.config import GPTConfig
from tianci.errors import TianciError
from tianci.generate import generate
from tianci.model import GPT
from tianci.quant import Int8Linear, apply_quantization, quantize_int8

V = 50


def tiny_gpt(**kw) -> GPT:
    base = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    base.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**base)).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_its_dequantized_weights(bias):
    """Guards a wrong scale axis or rounding in Int8Linear: the output must equal x @ dequantized(W).T
    (up to bf16 activations) and stay within ~1% of the fp32 layer it replaced."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=bias)
    q = Int8Linear(lin)
    x = torch.randn(3, 5, 64)
    ref = F.linear(x.to(torch.bfloat16).float(), q.dequantized(), lin.bias)
    y = q(x)
    assert y.shape == (3, 5, 48) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, atol=2e-2, rtol=2e-2)
    exact = lin(x).detach()
    assert ((y - exact).norm() / exact.norm()).item() < 0.01
    assert q.q.dtype == torch.int8 and q.q.abs().max().item() == 127  # each row uses its full range


def test_portable_path_equals_the_int8_kernel(monkeypatch):
    """Guards the non-CPU fallback (dequantize on the fly, used on CUDA/MPS) drifting from the
    CPU kernel: both must compute the same function."""
    torch.manual_seed(1)
    q = Int8Linear(torch.nn.Linear(32, 40, bias=False))
    x = torch.randn(4, 32)
    fast = q(x)
    monkeypatch.setattr(quant, "_int8_kernel_ok", lambda device: False)
    torch.testing.assert_close(q(x), fast, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("tied", [False, True])
def test_quantized_gpt_stays_close_and_decodes(tied):
    """Guards quantization breaking the model contract or the KV cache: logits stay close to fp32,
    forward(idx, targets) still returns a loss, and cached == recomputed greedy decoding."""
    m = tiny_gpt(tie_embeddings=tied)
    q = quantize_int8(copy.deepcopy(m))
    assert not any(isinstance(x, torch.nn.Linear) for x in q.modules())
    idx = torch.randint(0, V, (2, 12))
    lf, _ = m(idx)
    lq, loss = q(idx, idx)
    assert loss is not None and torch.isfinite(loss)
    assert ((lq - lf).norm() / lf.norm()).item() < 0.02
    if tied:  # the embedding keeps full precision for lookups
        assert q.wte.weight.dtype == torch.float32
    prompt = idx[:1, :3]
    a = torch.stack(list(generate(q, prompt, 20, temperature=0, use_cache=True)))
    b = torch.stack(list(generate(q, prompt, 20, temperature=0, use_cache=False)))
    assert torch.equal(a, b)


def test_quantize_refuses_training_models_and_unknown_kinds():
    """Guards silently 'training' int8 weights (they have no gradients) and a typo in --quantize
    being ignored."""
    m = tiny_gpt().train()
    with pytest.raises(TianciError, match="inference"):
        quantize_int8(m)
    with pytest.raises(TianciError, match="--quantize 'int4'"):
        apply_quantization(m.eval(), "int4")
    assert apply_quantization(m, "none") is m and isinstance(m.lm_head, torch.nn.Linear)

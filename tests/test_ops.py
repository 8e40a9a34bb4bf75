"""The hand-written training ops (tianci.ops) compute what PyTorch's composed ops compute."""

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from tianci.ops import RMSNorm, _ReLU2Fn, _RMSNormFn, relu2


def test_rmsnorm_gradcheck():
    """The hand-written backward is the derivative of the forward (float64, numerical Jacobian)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFn.apply(x, w, 1e-6), (x, w))


def test_relu2_gradcheck():
    torch.manual_seed(0)
    h = torch.randn(4, 16, dtype=torch.float64)
    h = (h + 0.05 * h.sign()).requires_grad_()  # away from the kink at 0, where the derivative is one-sided
    assert torch.autograd.gradcheck(_ReLU2Fn.apply, (h,))


@pytest.mark.parametrize("autocast", [False, True])
def test_rmsnorm_matches_nn_rmsnorm(autocast):
    """Same output and gradients as nn.RMSNorm(eps=None) on the training path, also under bf16 autocast
    (where the residual stream it reads stays float32)."""
    torch.manual_seed(0)
    ref, ours = nn.RMSNorm(32), RMSNorm(32)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(32))
        ours.weight.copy_(ref.weight)
    x = torch.randn(6, 7, 32) * 3
    dy = torch.randn(6, 7, 32)
    outs = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = m(xi)
        y.backward(dy.to(y.dtype))
        outs.append((y.detach(), xi.grad, m.weight.grad))
    for a, b in zip(*outs):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rmsnorm_eval_uses_torch():
    """Without a gradient (sampling, eval) the module is nn.RMSNorm itself: same bits."""
    m = RMSNorm(16)
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.equal(m(x), nn.RMSNorm.forward(m, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu2_matches_composed(dtype):
    """Bit-equal to F.relu(h).square() forward and backward in float32 and bfloat16."""
    torch.manual_seed(0)
    h = torch.randn(5, 64, dtype=dtype)
    dy = torch.randn(5, 64, dtype=dtype)
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    y1, y2 = F.relu(h1).square(), relu2(h2)
    y1.backward(dy), y2.backward(dy)
    assert torch.equal(y1, y2) and torch.equal(h1.grad, h2.grad)

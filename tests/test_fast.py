"""The fast paths compute the same function as the classic ones: fused loss, modern switches,
Muon, bf16 autocast, the benchmark's plumbing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from tianci import losses
from tianci.config import GPTConfig, TrainConfig, load_preset
from tianci.losses import linear_cross_entropy
from tianci.model import GPT
from tianci.optim import build_optimizers

V = 37


def tiny_cfg(**kw) -> GPTConfig:
    base = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


def reference(h, w, t, softcap=0.0):
    z = h @ w.t()
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z, t)


@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("chunk", [64, 1 << 21])  # many chunks (ragged last one) / one chunk
def test_fused_loss_equals_cross_entropy(monkeypatch, softcap, chunk):
    """Guards the chunked linear+CE against wrong values or gradients (chunk borders, softcap, the
    gradient computed in forward and scaled in backward)."""
    monkeypatch.setattr(losses, "CHUNK_ELEMS", chunk)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(45, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(V, 8, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, V, (45,), generator=g)
    a = linear_cross_entropy(h, w, t, softcap)
    b = reference(h, w, t, softcap)
    ga = torch.autograd.grad(3.0 * a, (h, w))  # a non-unit upstream gradient must be honoured
    gb = torch.autograd.grad(3.0 * b, (h, w))
    assert torch.allclose(a, b, atol=1e-12)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-12)


def test_fused_loss_ignore_index_and_no_grad():
    """Guards ignored targets (-100) being counted, and the no_grad (eval) path returning a different loss."""
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(20, 8, generator=g), torch.randn(V, 8, generator=g)
    t = torch.randint(0, V, (20,), generator=g)
    t[::3] = -100
    with torch.no_grad():
        a = linear_cross_entropy(h, w, t)
    assert torch.allclose(a, F.cross_entropy(h @ w.t(), t), atol=1e-5)


def test_fused_loss_under_no_grad_skips_the_gradient_work():
    """Guards an evaluation that paid for gradients it throws away: the weights require grad (they
    do in eval too), but under torch.no_grad the fused loss must run only the logits matmul, one a
    chunk -- not the dh and dW matmuls -- and still give the same loss."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(2)
    h = torch.randn(40, 8, generator=g).requires_grad_()
    w = torch.randn(V, 8, generator=g).requires_grad_()
    t = torch.randint(0, V, (40,), generator=g)

    def mm_calls(grad: bool) -> tuple[int, torch.Tensor]:
        with profile(activities=[ProfilerActivity.CPU]) as prof, torch.set_grad_enabled(grad):
            loss = linear_cross_entropy(h, w, t)
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm_", "aten::addmm")), loss

    n_eval, a = mm_calls(False)
    n_train, b = mm_calls(True)
    assert n_eval == 1 and n_train == 3  # one chunk: logits; + dh and dW when training
    assert not a.requires_grad and torch.allclose(a, b.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_exact_where_the_target_probability_underflows(dtype):
    """Guards the loss read off the fused softmax (-log p_target): a row whose target lies ~150 nats
    below the best logit underflows p to 0 in fp32, and must still get logsumexp(z) - z_target,
    finite, not inf, as F.cross_entropy gives; the ordinary rows beside it stay exact too."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(12, 8, generator=g)
    w = torch.randn(V, 8, generator=g)
    h[0] = 0.0
    h[0, 0], w[:, 0] = 1.0, 0.0
    w[5, 0], w[6, 0] = 100.0, -50.0  # row 0: logit 100 for token 5, -50 for its target 6
    t = torch.randint(0, V, (12,), generator=g)
    t[0] = 6
    ref = F.cross_entropy(h @ w.t(), t)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        a = linear_cross_entropy(h, w, t)
    assert torch.isfinite(a) and ref > 12  # row 0 alone adds 150 / 12 to the mean
    assert torch.allclose(a.float(), ref, rtol=1e-5 if dtype == torch.float32 else 2e-2)


def test_fused_loss_gradcheck():
    """Guards the hand-written backward against any analytic slip (finite differences)."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 9, (6,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy(a, b, t, 3.0), (h, w))


MODERN = {
    "rope": dict(pos="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp_act="relu2"),
    "swiglu": dict(mlp_act="swiglu"),
    "gelu": dict(mlp_act="gelu"),
    "tied": dict(tie_embeddings=True),
    "zero_init": dict(zero_init_proj=True),
    "softcap": dict(logit_softcap=10.0),
    "all": dict(pos="rope", norm="rmsnorm", qk_norm=True, mlp_act="relu2", tie_embeddings=True,
                zero_init_proj=True, logit_softcap=15.0, bias=False),
    "x0_lambdas": dict(x0_lambdas=True),
    "value_embeds": dict(value_embeds=True),
    "recipe-loop": dict(x0_lambdas=True, value_embeds=True, attn_impl="loop", pos="rope", norm="rmsnorm"),
}


@pytest.mark.parametrize("name", sorted(MODERN))
def test_modern_switch_trains_and_stays_causal(name):
    """Guards each modern option: builds, fused loss == full loss, a few AdamW steps lower the loss
    on a fixed batch, and a future token never changes an earlier position's logits."""
    torch.manual_seed(0)
    model = GPT(tiny_cfg(**MODERN[name]))
    x = torch.randint(0, V, (4, 16))
    y = torch.roll(x, -1, dims=1)
    _, full = model(x, y)
    _, fused = model(x, y, return_logits=False)
    assert torch.allclose(full, fused, atol=1e-5)
    opt = build_optimizers(model, TrainConfig(learning_rate=3e-3, weight_decay=0.0), "cpu")
    first = None
    for _ in range(8):
        _, loss = model(x, y, return_logits=False)
        first = loss.item() if first is None else first
        loss.backward()
        for o in opt:
            o.step()
            o.zero_grad()
    assert model(x, y)[1].item() < first - 0.05
    model.eval()
    with torch.no_grad():
        a, _ = model(x)
        x2 = x.clone()
        x2[:, 10:] = (x2[:, 10:] + 1) % V
        b, _ = model(x2)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_muon_reduces_loss():
    """Guards optimizer='muon' (torch.optim.Muon on 2-D hidden weights, AdamW for the rest): every
    parameter is optimised exactly once and steps lower the loss."""
    torch.manual_seed(0)
    model = GPT(tiny_cfg(pos="rope", norm="rmsnorm", mlp_act="relu2", bias=False))
    tc = TrainConfig(optimizer="muon", learning_rate=3e-3, muon_lr=0.02)
    opts = build_optimizers(model, tc, "cpu")
    assert type(opts[0]).__name__ == "Muon"
    owned = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    x = torch.randint(0, V, (4, 16))
    y = torch.roll(x, -1, dims=1)
    before = model(x, y)[1].item()
    for _ in range(10):
        _, loss = model(x, y, return_logits=False)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
    assert model(x, y)[1].item() < before - 0.1


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_our_muon_matches_torch_muon(adjust):
    """Guards tianci.optim.Muon (fp32 Newton-Schulz on CPU, because torch's bf16 one is ~30x slower
    there) drifting from torch.optim.Muon's algorithm: same momentum, nesterov, scaling, decay."""
    from tianci.optim import Muon

    torch.manual_seed(0)
    w = torch.randn(24, 40)
    ours, ref = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    kw = dict(lr=0.02, weight_decay=0.01, adjust_lr_fn=adjust)
    oa, ob = Muon([ours], **kw), torch.optim.Muon([ref], **kw)
    for _ in range(3):
        g = torch.randn(24, 40)
        ours.grad, ref.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    moved = (ref - w).abs().max()
    assert moved > 1e-3
    assert (ours - ref).abs().max() < 0.05 * moved  # bf16 (torch) vs fp32 (ours) rounding only


@pytest.mark.parametrize("hold", [True, False])
@pytest.mark.parametrize("chunk", [64 * V, 1 << 21])
def test_fused_loss_bf16_training_path_matches_cross_entropy(monkeypatch, chunk, hold):
    """Guards the bf16 training path of the fused loss (softmax read from bf16 logits, written in bf16,
    the mean's 1/count applied in backward; dW from the held gradient rows in one product, or per chunk
    when they would not fit): its loss and gradients must match F.cross_entropy of the same bf16-rounded
    logits to bf16 rounding, across chunk borders, with ignored rows getting no gradient."""
    monkeypatch.setattr(losses, "CHUNK_ELEMS", chunk)
    monkeypatch.setattr(losses, "HOLD_ELEMS", 1 << 24 if hold else 0)
    g = torch.Generator().manual_seed(4)
    h = (2 * torch.randn(150, 16, generator=g)).requires_grad_()
    w = torch.randn(V, 16, generator=g).requires_grad_()
    t = torch.randint(0, V, (150,), generator=g)
    t[7::11] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = linear_cross_entropy(h, w, t)
    ga = torch.autograd.grad(2.0 * a, (h, w))
    hb, wb = h.bfloat16().float(), w.bfloat16().float()  # the operands the bf16 matmuls see
    b = F.cross_entropy((hb @ wb.t()).bfloat16().float(), t)
    hr, wr = hb.detach().requires_grad_(), wb.detach().requires_grad_()
    gb = torch.autograd.grad(2.0 * F.cross_entropy((hr @ wr.t()).bfloat16().float(), t), (hr, wr))
    assert abs(a.item() - b.item()) < 2e-3 * b.item()
    for x, y in zip(ga, gb):
        assert x.dtype == torch.float32
        assert F.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.999
        assert (x - y).abs().max() < 0.02 * y.abs().max()
    assert torch.all(ga[0][7::11] == 0)  # ignored rows: no gradient


def test_bf16_autocast_path_runs():
    """Guards the bf16 autocast path (CUDA, bf16 CPUs): fused loss under autocast is finite, close
    to fp32, and gives fp32 gradients for fp32 master weights."""
    torch.manual_seed(0)
    model = GPT(tiny_cfg(n_layer=1))
    x = torch.randint(0, V, (2, 16))
    y = torch.roll(x, -1, dims=1)
    _, ref = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, y, return_logits=False)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05
    assert model.lm_head.weight.grad.dtype == torch.float32


def test_cpu_training_attention_runs_in_fp32_under_bf16_autocast():
    """Guards the bf16 CPU step's attention: torch's CPU flash-attention backward is ~4.5x slower in
    bf16 than in fp32 at ci-cpu's shape, and autocast casts fp32 inputs of SDPA straight back to
    bf16 (it is on the CPU lower-precision list), so a plain .float() inside autocast bought nothing.
    Training attention must compute exactly what fp32 SDPA computes; inference keeps bf16."""
    from tianci.attention import _sdpa

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
        in_bf16 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.equal(ref, in_bf16)  # the two computations differ, so the check below can tell
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _sdpa(q, k, v, is_causal=True)
        with torch.no_grad():
            y_infer = _sdpa(q, k, v, is_causal=True)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    y.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    assert torch.equal(y_infer, in_bf16)


def test_cpu_auto_dtype_is_fp32_and_malloc_tune_is_safe():
    """Guards 'auto' choosing bf16 on CPU (measured 1.0x on bf16 CPUs, ~70x slower without AVX512-BF16)."""
    from tianci.runtime import pick_dtype, tune_malloc

    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert isinstance(tune_malloc(), bool)


def test_bench_smoke():
    """Guards `tianci bench` plumbing: every variant reported with ms/step, MFU, speedups, decode rates."""
    from tianci.measure.bench import format_table, run_bench

    pr = load_preset("nanogpt-cpu")
    pr.model = tiny_cfg()
    pr.train.batch_size = 2
    dec = copy.deepcopy(pr)
    res = run_bench(pr, dec, steps=1, rounds=1, decode_tokens=3, decode_max_s=5, peak_n=128)
    for v in ("fast", "classic", "tutorial"):
        r = res["train"]["variants"][v]
        assert r["ms_per_step"] > 0 and r["mfu"] > 0 and r["speedup_vs_classic"] > 0
    assert res["decode"]["b1_cache"]["tokens"] == 3 and res["decode"]["b8_nocache"]["tokens_per_s"] > 0
    assert "vs classic" in format_table(res)


def test_cuda_device_always_has_an_index(monkeypatch):
    """Guards the crash seen on an H200: `--device cuda` (or auto) gave torch.device("cuda") with no
    index, and torch.cuda.set_device / DDP device_ids refused it ("Expected a torch.device with a
    specified index")."""
    from tianci.runtime import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_missing_device_is_a_parameter_error(monkeypatch):
    """Guards `sample --device cuda` on a CPU-only torch dying with an AssertionError from deep in
    torch: compute_init names the device and what this machine allows."""
    from tianci.errors import ParameterError
    from tianci.runtime import compute_init

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1", "gpu"):
        with pytest.raises(ParameterError) as e:
            compute_init(spec, ddp=False)
        assert e.value.param == "device" and "cpu" in e.value.allowed


# ----------------------------------------------------------------------------- the recipe switches (issue 16)

RECIPE = ("resid_lambdas", "x0_lambdas", "value_embeds")  # the parameter names x0_lambdas / value_embeds add


@pytest.mark.parametrize("impl", ["sdpa", "loop"])
def test_recipe_switches_start_as_the_plain_model(impl):
    """Guards x0_lambdas / value_embeds changing the model at init (lambdas not 1 and 0, value
    embeddings not zero) or drawing random numbers that shift every other weight of the seed's
    model: an A/B of the switch would then measure a different initialisation too."""
    torch.manual_seed(0)
    plain = GPT(tiny_cfg(attn_impl=impl, n_layer=3))
    torch.manual_seed(0)
    both = GPT(tiny_cfg(attn_impl=impl, n_layer=3, x0_lambdas=True, value_embeds=True))
    sp, sb = plain.state_dict(), both.state_dict()
    assert all(torch.equal(sp[k], sb[k]) for k in sp)
    extra = sorted(set(sb) - set(sp))
    assert extra == ["resid_lambdas", "value_embeds.0.weight", "value_embeds.2.weight", "x0_lambdas"]
    assert sb["resid_lambdas"].tolist() == [1.0] * 3 and sb["x0_lambdas"].tolist() == [0.0] * 3
    x = torch.randint(0, V, (2, 16))
    assert torch.equal(plain(x, x)[0], both(x, x)[0])


def test_recipe_parameters_sit_in_the_right_optimizer_groups():
    """Guards the lambdas being weight-decayed toward 0 (resid_lambda decayed to 0 cuts the residual
    stream) or handed to Muon (it orthogonalises matrices, not scalars or embedding tables)."""
    model = GPT(tiny_cfg(x0_lambdas=True, value_embeds=True))
    named = dict(model.named_parameters())
    scalars = {id(named["resid_lambdas"]), id(named["x0_lambdas"])}
    tables = {id(p) for n, p in named.items() if n.startswith("value_embeds.")}
    assert len(tables) == 1  # n_layer=2: the last layer only
    (adamw,) = build_optimizers(model, TrainConfig(weight_decay=0.1), "cpu")
    for g in adamw.param_groups:
        ids = {id(p) for p in g["params"]}
        assert (scalars <= ids) == (g["weight_decay"] == 0.0) and (tables <= ids) == (g["weight_decay"] > 0)
    muon, rest = build_optimizers(model, TrainConfig(optimizer="muon"), "cpu")
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert not (scalars | tables) & in_muon
    assert (scalars | tables) <= {id(p) for g in rest.param_groups for p in g["params"]}


def test_recipe_parameter_and_flop_counts():
    """Guards num_params / flops_per_token miscounting the recipe switches: a value embedding is a
    lookup (V x C per table, no matmul FLOPs, not a non-embedding parameter), the lambdas two
    scalars per layer."""
    plain = GPT(tiny_cfg(n_layer=4))
    both = GPT(tiny_cfg(n_layer=4, x0_lambdas=True, value_embeds=True))
    assert both.num_params(non_embedding=False) == plain.num_params(non_embedding=False) + 2 * V * 32 + 2 * 4
    assert both.num_params() == plain.num_params() + 2 * 4
    assert both.flops_per_token() == plain.flops_per_token()


def test_value_embeds_need_attention():
    """Guards value_embeds=True on a model without attention building tables nothing reads."""
    from tianci.config import ConfigError

    with pytest.raises(ConfigError) as e:
        tiny_cfg(value_embeds=True, attn="none").validate()
    assert e.value.param == "value_embeds"

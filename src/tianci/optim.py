"""Optimizers and the learning-rate schedule.

AdamW (nanoGPT): weight decay on matrices and embeddings, none on biases and norm gains.
Muon (optimizer="muon"): orthogonalised momentum for the 2-D hidden weight matrices, AdamW for
embeddings, lm_head, biases and gains (the modded-nanogpt / nanochat recipe).
Every param group carries `lr_scale`, so one schedule multiplier drives all optimizers.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # fused AdamW on the CPU too: its foreach form falls back to a per-tensor loop there (ci-cpu, one
    # thread, Xeon: 3.6-5.0 ms a step vs 1.1 ms fused, of a ~60 ms step). nanoGPT fuses on CUDA only,
    # so its CPU baseline (nanogpt-cpu) sets fused_adamw = false.
    fused = device_type == "cuda" or (device_type == "cpu" and cfg.fused_adamw)
    if cfg.optimizer == "muon":
        hidden = [p for n, p in params if p.dim() == 2 and n.startswith("h.")]
        hidden_ids = {id(p) for p in hidden}
        rest = [(n, p) for n, p in params if id(p) not in hidden_ids]
        muon = make_muon(hidden, cfg)
        return [muon, _adamw(rest, cfg, fused)]
    return [_adamw(params, cfg, fused)]


def _adamw(params, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    groups = [g for g in groups if g["params"]]
    kw = {"fused": True} if fused else {"foreach": True}
    cls = CautiousAdamW if cfg.cautious_wd else torch.optim.AdamW
    return cls(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **kw)


class CautiousAdamW(torch.optim.AdamW):
    """AdamW with cautious weight decay (Chen et al. 2025): the decoupled decay lr * wd * p is applied
    only where the Adam step moves the coordinate toward zero (step and weight of opposite signs), so
    decay never fights the gradient. Each group's weight decay is kept as `cautious_wd` and AdamW's own
    is 0; the step is told apart from the weights by a copy taken before it."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        for g in self.param_groups:
            g["cautious_wd"], g["weight_decay"] = g["weight_decay"], 0.0

    @torch.no_grad()
    def step(self, closure=None):
        before = [[p.clone() for p in g["params"]] if g["cautious_wd"] else [] for g in self.param_groups]
        loss = super().step(closure)
        for g, old in zip(self.param_groups, before):
            for p, p0 in zip(g["params"], old):
                toward_zero = (p - p0) * p0 < 0
                p.sub_(p0 * toward_zero, alpha=g["lr"] * g["cautious_wd"])
        return loss


def make_muon(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    opt = Muon(params, lr=cfg.muon_lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    for g in opt.param_groups:
        g["lr_scale"] = cfg.muon_lr / cfg.learning_rate
    return opt


def _newton_schulz(g: torch.Tensor, steps: int, coeffs, eps: float) -> torch.Tensor:
    """Approximately orthogonalise g (replace its singular values by ~1) with a quintic iteration."""
    a, b, c = coeffs
    x = g / (g.norm() + eps)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.t()
    for _ in range(steps):
        m = x @ x.t()
        x = a * x + (b * m + c * (m @ m)) @ x
    return x.t() if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan; the algorithm and defaults of torch.optim.Muon, torch >= 2.9).

    Why our own: torch.optim.Muon runs Newton-Schulz in bf16, which CPUs without AVX512-BF16
    emulate ~70x slower than fp32 (measured: 1.57 s per optimizer step at nanoGPT's CPU config,
    vs 35 ms for AdamW). Here it runs in bf16 on CUDA only, fp32 elsewhere."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients=(3.4445, -4.775, 2.0315), eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: str | None = None):
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r}: expected original|match_rms_adamw")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn))
        for g in self.param_groups:
            for p in g["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D parameters (got shape {tuple(p.shape)})")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = st["momentum_buffer"]
                buf.mul_(g["momentum"]).add_(p.grad)
                upd = p.grad.add(buf, alpha=g["momentum"]) if g["nesterov"] else buf
                dt = torch.bfloat16 if p.device.type == "cuda" else torch.float32
                o = _newton_schulz(upd.to(dt), g["ns_steps"], g["ns_coefficients"], g["eps"])
                rows, cols = p.shape
                if g["adjust_lr_fn"] == "match_rms_adamw":  # update RMS ~ AdamW's at the same lr
                    ratio = 0.2 * math.sqrt(max(rows, cols))
                else:  # Keller's original
                    ratio = math.sqrt(max(1.0, rows / cols))
                p.mul_(1 - g["lr"] * g["weight_decay"])
                p.add_(o.to(p.dtype), alpha=-g["lr"] * ratio)
        return loss


def lr_multiplier(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warmup, then the decay from learning_rate to min_lr: the one schedule of the trainer
    and the benchmark (train.train_step).

    lr_schedule="cosine": a cosine over the whole span. lr_schedule="wsd" (warmup-stable-decay):
    constant at learning_rate, then a straight line down to min_lr over the last cooldown_frac of
    the span; a constant rate makes fast progress and the cooldown collects it (modded-nanogpt).
    `progress` (0..1) overrides step/lr_decay_iters: time-budgeted runs pass the fraction of
    --max-time used, so the schedule finishes when the budget does."""
    if step < cfg.warmup_iters:
        return (step + 1) / (cfg.warmup_iters + 1)
    if progress is None:
        decay_iters = cfg.lr_decay_iters or cfg.max_iters
        span = max(1, decay_iters - cfg.warmup_iters)
        progress = (step - cfg.warmup_iters) / span
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.min_lr / cfg.learning_rate
    if cfg.lr_schedule == "wsd":
        left = (1 - progress) / cfg.cooldown_frac  # > 1 before the cooldown, 1 where it starts, 0 at the end
        return floor + (1 - floor) * min(1.0, left)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_progress(cfg: TrainConfig, step: int, elapsed: float) -> float | None:
    """How far through its budget a time-budgeted run is (0..1), for lr_multiplier; None when the
    budget is in steps. With lr_decay_iters also set, whichever budget runs out first leads."""
    if cfg.max_time <= 0:
        return None
    progress = elapsed / cfg.max_time
    if cfg.lr_decay_iters:
        progress = max(progress, (step - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters))
    return progress


def set_lr(optimizers, cfg: TrainConfig, mult: float) -> float:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = cfg.learning_rate * g.get("lr_scale", 1.0) * mult
    return cfg.learning_rate * mult

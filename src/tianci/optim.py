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
    fused = device_type == "cuda"
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
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **kw)


def make_muon(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError("optimizer='muon' needs torch >= 2.9 (torch.optim.Muon)")
    opt = torch.optim.Muon(params, lr=cfg.muon_lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    for g in opt.param_groups:
        g["lr_scale"] = cfg.muon_lr / cfg.learning_rate
    return opt


def lr_multiplier(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warmup, then cosine decay from learning_rate to min_lr.

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
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizers, cfg: TrainConfig, mult: float) -> float:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = cfg.learning_rate * g.get("lr_scale", 1.0) * mult
    return cfg.learning_rate * mult

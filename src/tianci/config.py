"""Configuration: validated dataclasses, TOML presets, and CLI flags generated from fields.

No torch here: `import tianci.config` must stay cheap (the counting model and the CLI's
help use it). A preset is a TOML file in `tianci/presets/` (or any path) with up to three
tables: `[model]` (GPTConfig), `[train]` (TrainConfig) and, for the counting model,
`[ngram]` (NGramConfig). Command-line flags override preset values, field by field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


from .errors import TianciError


class ConfigError(TianciError, ValueError):
    """A configuration value is out of range or a preset is malformed; the message names it."""


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is not allowed: expected {allowed}")


@dataclass
class GPTConfig:
    """The model. The switches below turn the tutorial's ladder on one rung at a time.

    bigram:          wte + lm_head only            (use_wpe=False, attn="none", mlp=False)
    +position:       use_wpe=True                  (pos="learned")
    +self-attention: attn="single"                 one head as wide as n_embd
    +multi-head:     attn="multi"                  n_head heads of n_embd // n_head
    +feed-forward:   mlp=True                      Linear+ReLU after attention
    +blocks:         n_layer > 1                   the block repeated
    +residual:       residual=True                 x = x + f(x)
    +projection:     proj=True                     output projections, 4x-wide MLP
    +layernorm:      norm="layernorm"              pre-norm + ln_f
    +dropout:        dropout > 0
    """

    vocab_size: int = 0  # 0 = take it from the data's tokenizer
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True
    # --- the ladder switches ---
    pos: str = "learned"  # "none" | "learned" (wpe) | "rope"
    attn: str = "multi"  # "none" | "single" | "multi"
    mlp: bool = True
    residual: bool = True
    proj: bool = True
    norm: str = "layernorm"  # "none" | "layernorm" | "rmsnorm"
    # --- implementation and modern options ---
    attn_impl: str = "sdpa"  # "loop" (tutorial: one Head module per head) | "sdpa" (fused QKV)
    mlp_act: str = "relu"  # "relu" | "gelu" | "relu2" | "swiglu"
    mlp_ratio: int = 4
    qk_norm: bool = False
    tie_embeddings: bool = False
    zero_init_proj: bool = False
    logit_softcap: float = 0.0  # 0 = off; else logits = c * tanh(logits / c)
    init_std: float = 0.02

    def validate(self) -> "GPTConfig":
        _check(self.vocab_size >= 0, "vocab_size", self.vocab_size, ">= 0")
        _check(1 <= self.block_size <= 65536, "block_size", self.block_size, "1..65536")
        _check(1 <= self.n_layer <= 256, "n_layer", self.n_layer, "1..256")
        _check(self.n_head >= 1, "n_head", self.n_head, ">= 1")
        _check(self.n_embd >= 1, "n_embd", self.n_embd, ">= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "0 <= dropout < 1")
        _check(self.pos in ("none", "learned", "rope"), "pos", self.pos, "none|learned|rope")
        _check(self.attn in ("none", "single", "multi"), "attn", self.attn, "none|single|multi")
        _check(self.norm in ("none", "layernorm", "rmsnorm"), "norm", self.norm, "none|layernorm|rmsnorm")
        _check(self.attn_impl in ("loop", "sdpa"), "attn_impl", self.attn_impl, "loop|sdpa")
        _check(self.mlp_act in ("relu", "gelu", "relu2", "swiglu"), "mlp_act", self.mlp_act,
               "relu|gelu|relu2|swiglu")
        _check(self.mlp_ratio >= 1, "mlp_ratio", self.mlp_ratio, ">= 1")
        _check(self.logit_softcap >= 0, "logit_softcap", self.logit_softcap, ">= 0")
        if self.attn == "multi":
            _check(self.n_embd % self.n_head == 0, "n_head", self.n_head,
                   f"a divisor of n_embd={self.n_embd}")
        if self.pos == "rope" and self.attn != "none":
            hs = self.head_size
            _check(hs % 2 == 0, "pos", self.pos, f"'rope' needs an even head size (got {hs})")
        return self

    @property
    def heads(self) -> int:
        return 1 if self.attn == "single" else self.n_head

    @property
    def head_size(self) -> int:
        return self.n_embd // self.heads


@dataclass
class TrainConfig:
    """The optimisation run: budgets, schedule, logging, device."""

    batch_size: int = 64
    max_iters: int = 5000
    max_time: float = 0.0  # seconds of training; 0 = no time budget
    learning_rate: float = 3e-4
    min_lr: float = 3e-5
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0 = max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    grad_accum: int = 1
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for 2-D hidden weights, AdamW for the rest)
    muon_lr: float = 0.02
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    ckpt_interval: int = 0  # 0 = at every eval
    seed: int = 1337
    device: str = "auto"  # "auto" (cuda > mps > cpu) | "cpu" | "cuda" | "cuda:1" | "mps"
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    compile: bool = False
    fused_loss: bool = True  # chunked cross-entropy that never materialises full fp32 logit grads
    log: str = "none"  # "none" | "tensorboard" | "wandb"
    progress: bool = True

    def validate(self) -> "TrainConfig":
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.max_iters >= 0, "max_iters", self.max_iters, ">= 0")
        _check(self.max_time >= 0, "max_time", self.max_time, ">= 0 seconds")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(self.min_lr >= 0, "min_lr", self.min_lr, ">= 0")
        _check(self.warmup_iters >= 0, "warmup_iters", self.warmup_iters, ">= 0")
        _check(self.lr_decay_iters >= 0, "lr_decay_iters", self.lr_decay_iters, ">= 0")
        _check(0 <= self.beta1 < 1, "beta1", self.beta1, "0 <= beta1 < 1")
        _check(0 <= self.beta2 < 1, "beta2", self.beta2, "0 <= beta2 < 1")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        _check(self.grad_accum >= 1, "grad_accum", self.grad_accum, ">= 1")
        _check(self.optimizer in ("adamw", "muon"), "optimizer", self.optimizer, "adamw|muon")
        _check(self.eval_interval >= 1, "eval_interval", self.eval_interval, ">= 1")
        _check(self.eval_iters >= 1, "eval_iters", self.eval_iters, ">= 1")
        _check(self.log_interval >= 1, "log_interval", self.log_interval, ">= 1")
        _check(self.ckpt_interval >= 0, "ckpt_interval", self.ckpt_interval, ">= 0")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", self.dtype,
               "auto|float32|bfloat16|float16")
        _check(self.log in ("none", "tensorboard", "wandb"), "log", self.log, "none|tensorboard|wandb")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               "device", self.device, "auto|cpu|cuda[:N]|mps")
        return self


@dataclass
class NGramConfig:
    """The counting model (pure Python): order k n-gram; k=1 is the tutorial's bigram."""

    order: int = 1  # characters of context
    add_k: float = 0.0  # additive smoothing; 0 = none (unseen -> backoff)
    seed: int = 1337

    def validate(self) -> "NGramConfig":
        _check(1 <= self.order <= 8, "order", self.order, "1..8")
        _check(self.add_k >= 0, "add_k", self.add_k, ">= 0")
        return self


SECTIONS = {"model": GPTConfig, "train": TrainConfig, "ngram": NGramConfig}


@dataclass
class Preset:
    name: str
    kind: str = "gpt"  # "gpt" | "ngram"
    description: str = ""
    rung: str = ""  # what this rung of the ladder adds (for tables and docs)
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ngram: NGramConfig = field(default_factory=NGramConfig)


def preset_names() -> list[str]:
    root = resources.files("tianci") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _build(cls, table: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in table.items():
        if k not in known:
            raise ConfigError(f"{where}: unknown field {k!r} (known: {', '.join(known)})")
        kwargs[k] = _coerce(known[k], v, f"{where}.{k}")
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, v: Any, where: str) -> Any:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if t == "bool":
            if isinstance(v, str):
                if v.lower() in ("1", "true", "yes", "on"):
                    return True
                if v.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(v)
            return bool(v)
        if t == "int":
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(v)
            return int(v)
        if t == "float":
            return float(v)
        return str(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={v!r} is not a valid {t}") from None


def load_preset(name_or_path: str) -> Preset:
    """Load a preset by name (shipped in the package) or by path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        text, name = p.read_text(encoding="utf-8"), p.stem
    else:
        res = resources.files("tianci") / "presets" / f"{name_or_path}.toml"
        if not res.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}; known presets: {', '.join(preset_names())}"
                " (or give a path to a .toml file)")
        text, name = res.read_text(encoding="utf-8"), name_or_path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {name_or_path!r}: invalid TOML: {e}") from None
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for k in top:
        if k not in ("kind", "description", "rung"):
            raise ConfigError(f"preset {name_or_path!r}: unknown key {k!r}")
    for k in data:
        if isinstance(data[k], dict) and k not in SECTIONS:
            raise ConfigError(f"preset {name_or_path!r}: unknown table [{k}]")
    preset = Preset(
        name=name,
        kind=str(top.get("kind", "gpt")),
        description=str(top.get("description", "")),
        rung=str(top.get("rung", "")),
        model=_build(GPTConfig, data.get("model", {}), f"preset {name}: [model]"),
        train=_build(TrainConfig, data.get("train", {}), f"preset {name}: [train]"),
        ngram=_build(NGramConfig, data.get("ngram", {}), f"preset {name}: [ngram]"),
    )
    if preset.kind not in ("gpt", "ngram"):
        raise ConfigError(f"preset {name}: kind={preset.kind!r} is not allowed: expected gpt|ngram")
    return preset


# ----------------------------------------------------------------------------- CLI flags

def _flag(section: str, name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, sections=("model", "train", "ngram")) -> None:
    """Add one flag per config field (kebab-case). Defaults are None so presets show through."""
    seen = set()
    for sec in sections:
        group = parser.add_argument_group(f"{sec} config (overrides the preset)")
        for f in fields(SECTIONS[sec]):
            if f.name in seen:
                continue
            seen.add(f.name)
            t = f.type if isinstance(f.type, str) else f.type.__name__
            kw: dict[str, Any] = dict(dest=f"cfg_{sec}__{f.name}", default=None)
            if t == "bool":
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = {"int": int, "float": float}.get(t, str)
                kw["metavar"] = t.upper()
            default = f.default if f.default is not dataclasses.MISSING else None
            kw["help"] = f"(default {default!r})"
            group.add_argument(_flag(sec, f.name), **kw)


def apply_overrides(preset: Preset, args: argparse.Namespace) -> Preset:
    """Copy every flag the user gave onto the preset's dataclasses, then validate."""
    for key, value in vars(args).items():
        if not key.startswith("cfg_") or value is None:
            continue
        sec, name = key[4:].split("__", 1)
        # one flag per name: a field that two sections share (seed) is set in both
        for obj in (getattr(preset, s) for s in SECTIONS):
            f = next((f for f in fields(obj) if f.name == name), None)
            if f is not None:
                setattr(obj, name, _coerce(f, value, _flag(sec, name)))
    return validate(preset)


def validate(preset: Preset) -> Preset:
    preset.model.validate()
    preset.train.validate()
    preset.ngram.validate()
    return preset


def to_dict(preset: Preset) -> dict:
    return dataclasses.asdict(preset)


def from_dict(d: dict) -> Preset:
    return Preset(
        name=d.get("name", "custom"),
        kind=d.get("kind", "gpt"),
        description=d.get("description", ""),
        rung=d.get("rung", ""),
        model=_build(GPTConfig, d.get("model", {}), "config [model]"),
        train=_build(TrainConfig, d.get("train", {}), "config [train]"),
        ngram=_build(NGramConfig, d.get("ngram", {}), "config [ngram]"),
    )


# always shown by format_config; every other field only when it differs from the dataclass default
_HEADLINE = {"model": ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"),
             "train": ("batch_size", "max_iters", "max_time", "learning_rate"),
             "ngram": ("order",)}


def format_config(preset: Preset) -> str:
    """The resolved config in a few lines: the headline fields, then whatever differs from the
    defaults (the full config is in the run's config.json)."""
    lines = [f"preset {preset.name} ({preset.kind})" + (f": {preset.description}" if preset.description else "")]
    for sec in (("ngram",) if preset.kind == "ngram" else ("model", "train")):
        obj = getattr(preset, sec)
        default = type(obj)()
        shown = [f.name for f in fields(obj)
                 if f.name in _HEADLINE[sec] or getattr(obj, f.name) != getattr(default, f.name)]
        lines.append(f"  {sec}: " + " ".join(f"{k}={getattr(obj, k)}" for k in shown))
    return "\n".join(lines)

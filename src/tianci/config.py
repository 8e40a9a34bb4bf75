"""Configuration: validated dataclasses and TOML presets (the CLI flags generated from the fields
are in tianci.flags).

No torch here: `import tianci.config` must stay cheap (the counting model and the CLI's
help use it). A preset is a TOML file in `tianci/presets/` (or any path) with up to three
tables: `[model]` (GPTConfig), `[train]` (TrainConfig) and, for the counting model,
`[ngram]` (NGramConfig). Command-line flags override preset values, field by field.
"""

from __future__ import annotations

import dataclasses
import math
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
        raise ConfigError(f"{name}={value!r} is not allowed: expected {allowed}", param=name, allowed=allowed)


def _f(default, help: str, *, choices: tuple | None = None, lo=None, hi=None, lo_open: bool = False,
       hi_open: bool = False):
    """A config field with its help text and allowed values: `choices`, or a range lo..hi (either
    end open with lo_open / hi_open). The metadata drives both validation and the CLI flag's help."""
    return field(default=default, metadata={"help": help, "choices": choices, "lo": lo, "hi": hi,
                                            "lo_open": lo_open, "hi_open": hi_open})


def allowed_text(f: dataclasses.Field) -> str | None:
    """The allowed values of a field, in words ("1..256", ">= 0", "0 <= dropout < 1", "none|rope")."""
    m = f.metadata
    if m.get("choices"):
        return "|".join(m["choices"])
    lo, hi = (None if m.get(k) is None else f"{m[k]:g}" for k in ("lo", "hi"))
    if lo is not None and hi is not None:
        if not m["lo_open"] and not m["hi_open"] and f.type in ("int", int):
            return f"{lo}..{hi}"
        return f"{lo} {'<' if m['lo_open'] else '<='} {f.name} {'<' if m['hi_open'] else '<='} {hi}"
    if lo is not None:
        return f"{'>' if m['lo_open'] else '>='} {lo}"
    if hi is not None:
        return f"{'<' if m['hi_open'] else '<='} {hi}"
    return None


def _validate_fields(obj) -> None:
    """Every field against its metadata; floats must be finite (no field means anything by inf or nan)."""
    for f in fields(obj):
        v, m = getattr(obj, f.name), f.metadata
        if isinstance(v, float) and not math.isfinite(v):
            _check(False, f.name, v, f"a finite number{', ' + allowed_text(f) if allowed_text(f) else ''}")
        ok = True
        if m.get("choices"):
            ok = v in m["choices"]
        if m.get("lo") is not None:
            ok = ok and (v > m["lo"] if m["lo_open"] else v >= m["lo"])
        if m.get("hi") is not None:
            ok = ok and (v < m["hi"] if m["hi_open"] else v <= m["hi"])
        _check(ok, f.name, v, allowed_text(f) or "")


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

    Past the ladder, for ci: form="clause" (SongNet's format symbols, tianci.formpos) tells the model at
    every position how many characters its clause has left and what ends it; off on every rung.
    From the speedruns (modded-nanogpt, nanochat), also off on every rung: x0_lambdas, value_embeds.
    """

    vocab_size: int = _f(0, "tokens in the vocabulary; 0 = the data's tokenizer (any other value must equal it)",
                         lo=0, hi=1 << 20)
    block_size: int = _f(256, "context length T in tokens", lo=1, hi=65536)
    n_layer: int = _f(6, "transformer blocks", lo=1, hi=256)
    n_head: int = _f(6, "attention heads per block (must divide n_embd)", lo=1, hi=1024)
    n_embd: int = _f(384, "embedding width C", lo=1, hi=16384)
    dropout: float = _f(0.0, "dropout probability (training only)", lo=0.0, hi=1.0, hi_open=True)
    bias: bool = _f(True, "biases in the Linear layers and norms")
    # --- the ladder switches ---
    pos: str = _f("learned", "position information: none, learned (wpe) or rope (rotary)",
                  choices=("none", "learned", "rope"))
    attn: str = _f("multi", "self-attention: none, single (one head as wide as n_embd) or multi (n_head heads)",
                   choices=("none", "single", "multi"))
    mlp: bool = _f(True, "a feed-forward layer after attention")
    residual: bool = _f(True, "residual connections: x = x + f(x)")
    proj: bool = _f(True, "output projections and the 4x-wide MLP")
    norm: str = _f("layernorm", "normalisation before attention and MLP, and ln_f",
                   choices=("none", "layernorm", "rmsnorm"))
    # --- implementation and modern options ---
    attn_impl: str = _f("sdpa", "attention code: loop (the tutorial's one Head module per head) or sdpa "
                        "(fused QKV, scaled_dot_product_attention)", choices=("loop", "sdpa"))
    mlp_act: str = _f("relu", "MLP activation", choices=("relu", "gelu", "relu2", "swiglu"))
    mlp_ratio: int = _f(4, "MLP hidden width / n_embd", lo=1, hi=64)
    qk_norm: bool = _f(False, "normalise queries and keys before attention")
    tie_embeddings: bool = _f(False, "lm_head shares its weights with wte")
    zero_init_proj: bool = _f(False, "output projections start at zero (each block starts as the identity)")
    logit_softcap: float = _f(0.0, "0 = off; else logits = c * tanh(logits / c)", lo=0.0, hi=1000.0)
    head: str = _f("full", "output layer: full (one V-way linear) or adaptive (adaptive softmax: frequent "
                   "tokens in a small head, rare ones in cheaper tail clusters; exact full log-probs)",
                   choices=("full", "adaptive"))
    head_cutoffs: str = _f("", "adaptive head: comma-separated frequency-rank cluster cutoffs; empty = V/12, V/3")
    init_std: float = _f(0.02, "standard deviation of the normal weight init", lo=0.0, hi=1.0, lo_open=True)
    x0_lambdas: bool = _f(False, "each block reads resid_lambda * x + x0_lambda * x0 (x0: the embeddings the "
                          "first block reads), two learned scalars per layer starting at 1 and 0 (modded-nanogpt)")
    value_embeds: bool = _f(False, "value embeddings: a learned lookup of the input tokens added to the attention "
                            "values in every other layer, the last included (nanochat); zero at init")
    # --- ci ---
    form: str = _f("none", "form-aware inputs: clause = embeddings, at every position, of how many characters "
                   "the clause has left and what ends it (，/。/newline), read off each poem's punctuation in "
                   "training and off the 词谱 while composing (tianci.formpos; char tokenizer only)",
                   choices=("none", "clause"))

    def validate(self) -> "GPTConfig":
        _validate_fields(self)
        if self.head == "adaptive":
            _check(not self.tie_embeddings, "tie_embeddings", self.tie_embeddings,
                   "false with head='adaptive' (its clusters are not the embedding matrix)")
            _check(self.logit_softcap == 0, "logit_softcap", self.logit_softcap, "0 with head='adaptive'")
            if self.vocab_size:
                cuts = self.adaptive_cutoffs()
                _check(len(cuts) >= 1 and all(a < b for a, b in zip([0] + cuts, cuts + [self.vocab_size])),
                       "head_cutoffs", self.head_cutoffs, f"increasing integers in 1..{self.vocab_size - 1}")
        if self.attn == "multi":
            _check(self.n_embd % self.n_head == 0, "n_head", self.n_head,
                   f"a divisor of n_embd={self.n_embd}")
        if self.value_embeds:
            _check(self.attn != "none", "value_embeds", True, "false with attn='none' (there are no values)")
        if self.pos == "rope" and self.attn != "none":
            hs = self.head_size
            _check(hs % 2 == 0, "pos", self.pos, f"'rope' needs an even head size (got {hs})")
        return self

    def adaptive_cutoffs(self) -> list[int]:
        """Frequency-rank boundaries of the adaptive head's clusters (needs vocab_size)."""
        if not self.head_cutoffs.strip():
            return [max(1, self.vocab_size // 12), max(2, self.vocab_size // 3)]
        try:
            return [int(c) for c in self.head_cutoffs.split(",")]
        except ValueError:
            raise ConfigError(f"head_cutoffs={self.head_cutoffs!r} is not allowed: expected comma-separated integers",
                              param="head_cutoffs", allowed="comma-separated integers") from None

    @property
    def heads(self) -> int:
        return 1 if self.attn == "single" else self.n_head

    @property
    def head_size(self) -> int:
        return self.n_embd // self.heads


@dataclass
class TrainConfig:
    """The optimisation run: budgets, schedule, logging, device."""

    batch_size: int = _f(64, "sequences B per micro-batch", lo=1, hi=1 << 16)
    max_iters: int = _f(5000, "step budget (optimizer steps)", lo=0, hi=10**12)
    max_time: float = _f(0.0, "time budget in seconds of training; 0 = none (the learning-rate schedule "
                         "follows the clock)", lo=0.0, hi=1e8)
    target_loss: float = _f(0.0, "stop at the first evaluation whose val loss (nats/char) is at or below this; "
                            "0 = off (the schedule is unchanged: a speedrun's target)", lo=0.0)
    learning_rate: float = _f(3e-4, "peak learning rate (after warmup)", lo=0.0, lo_open=True)
    min_lr: float = _f(3e-5, "learning rate at the end of the decay (<= learning_rate)", lo=0.0)
    warmup_iters: int = _f(100, "steps of linear warmup", lo=0)
    lr_decay_iters: int = _f(0, "step at which the decay ends (warmup included); 0 = max_iters", lo=0)
    lr_schedule: str = _f("cosine", "after warmup: cosine (decay to min_lr over the whole budget) or wsd "
                          "(warmup-stable-decay: constant at learning_rate, then a linear cooldown to min_lr over "
                          "the last cooldown_frac of the budget; modded-nanogpt, nanochat)", choices=("cosine", "wsd"))
    cooldown_frac: float = _f(0.4, "lr_schedule=wsd: the fraction of the budget (steps after warmup, or max_time) "
                              "spent in the linear cooldown", lo=0.0, hi=1.0, lo_open=True)
    weight_decay: float = _f(0.1, "AdamW weight decay on matrices and embeddings", lo=0.0)
    cautious_wd: bool = _f(False, "cautious weight decay: decay only the coordinates AdamW's step already moves "
                           "toward zero (Chen et al. 2025; tried for the speedrun, docs/speed.md)")
    beta1: float = _f(0.9, "AdamW beta1", lo=0.0, hi=1.0, hi_open=True)
    beta2: float = _f(0.95, "AdamW beta2", lo=0.0, hi=1.0, hi_open=True)
    grad_clip: float = _f(1.0, "clip the gradient norm to this; 0 = off", lo=0.0)
    grad_accum: int = _f(1, "micro-batches per optimizer step", lo=1, hi=1 << 16)
    optimizer: str = _f("adamw", "adamw, or muon (Muon for the 2-D hidden weights, AdamW for the rest)",
                        choices=("adamw", "muon"))
    muon_lr: float = _f(0.02, "Muon's peak learning rate", lo=0.0, lo_open=True)
    eval_interval: int = _f(250, "evaluate (and checkpoint) every this many steps", lo=1)
    eval_iters: int = _f(20, "batches per split at each evaluation", lo=1)
    log_interval: int = _f(10, "log a metrics line every this many steps", lo=1)
    ckpt_interval: int = _f(0, "checkpoint every this many steps; 0 = at every evaluation", lo=0)
    seed: int = _f(1337, "random seed (weights, batches, dropout)", lo=0, hi=2**62)
    device: str = _f("auto", "auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps")
    dtype: str = _f("auto", "compute dtype (auto: bf16/fp16 on CUDA; on a CPU bf16 where it has bf16 matmuls and "
                    "a short probe of this config finds it faster, else fp32)",
                    choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = _f(False, "torch.compile the model")
    fused_loss: bool = _f(True, "chunked cross-entropy that never materialises full fp32 logit grads")
    fused_adamw: bool = _f(True, "AdamW as one fused kernel; false: the per-tensor loop nanoGPT runs on a CPU")
    log: str = _f("none", "mirror metrics to an experiment tracker", choices=("none", "tensorboard", "wandb"))
    progress: bool = _f(True, "progress: a bar on a terminal, a line every few seconds otherwise")

    def validate(self) -> "TrainConfig":
        _validate_fields(self)
        _check(self.min_lr <= self.learning_rate, "min_lr", self.min_lr,
               f"<= learning_rate ({self.learning_rate})")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               "device", self.device, "auto|cpu|cuda[:N]|mps")
        return self


@dataclass
class NGramConfig:
    """The counting model (pure Python): order k n-gram; k=1 is the tutorial's bigram."""

    order: int = _f(1, "characters of context (1 = the bigram)", lo=1, hi=8)
    add_k: float = _f(0.0, "additive smoothing; 0 = none (unseen contexts back off)", lo=0.0)
    seed: int = _f(1337, "random seed (weights, batches, dropout)", lo=0, hi=2**62)

    def validate(self) -> "NGramConfig":
        _validate_fields(self)
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
        kwargs[k] = coerce_field(known[k], v, f"{where}.{k}")
    return cls(**kwargs)


def coerce_field(f: dataclasses.Field, v: Any, where: str) -> Any:
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

"""The GPT: one class whose config switches reproduce every rung of the tutorial's ladder.

bigram -> +position -> +self-attention -> +multi-head -> +feed-forward -> +blocks -> +residual
-> +projection -> +layernorm -> +dropout (see GPTConfig). Two attention implementations compute
the same function: the tutorial's readable loop (one `Head` module per head) and a fused QKV
projection + `F.scaled_dot_product_attention`. Modern options (RoPE, RMSNorm, QK-norm, ReLU^2 /
SwiGLU, tied embeddings, zero-init projections, logit soft-capping) are switches too, and so is
the form-aware input of a ci model (form="clause": tianci.formpos), and two recipe items of the
speedruns: x0 / residual lambdas and value embeddings (x0_lambdas, value_embeds). The attention
modules are in tianci.attention.

Every model honours one contract: forward(idx, targets=None) -> (logits, loss).
Shapes: B = batch, T = time (tokens), C = n_embd, V = vocab, nh = heads, hs = head size.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from . import formpos
from .attention import FusedAttention, Head, LoopAttention  # noqa: F401  (re-exported: model.FusedAttention)
from .config import GPTConfig
from .losses import AdaptiveHead, linear_cross_entropy
from .ops import RMSNorm, relu2


class KVCache:
    """Preallocated keys/values for every layer: decoding writes in place, never torch.cat.

    The cache owns its position: `advance` is the one place it moves (GPT.hidden after a forward,
    decode.CompiledStep after a compiled step), so no caller keeps a second count."""

    def __init__(self, cfg: GPTConfig, batch_size: int, device=None, dtype=torch.float32):
        shape = (cfg.n_layer, batch_size, cfg.heads, cfg.block_size, cfg.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions already cached
        self.max_len = cfg.block_size

    def advance(self, T: int) -> None:
        """Record that T more positions were written (a cache never runs past its preallocated length)."""
        if self.pos + T > self.max_len:
            raise ValueError(f"sequence of {self.pos + T} tokens exceeds block_size={self.max_len}")
        self.pos += T

    def reset(self) -> None:
        self.pos = 0

    def row(self, i: int) -> "KVCache":
        """Row i as a batch-1 cache with its own position, sharing this cache's storage (views, not
        copies): the batched engine (tianci.engine) prefills one sequence into its slot through it."""
        view = copy.copy(self)
        view.k, view.v, view.pos = self.k[:, i:i + 1], self.v[:, i:i + 1], 0
        return view


class MLP(nn.Module):
    """Feed-forward. Before the +projection rung it is the tutorial's Linear(C, C) + ReLU;
    with it, the 4x-wide expansion and a projection back (GPT-2)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.act = cfg.mlp_act
        hidden = cfg.mlp_ratio * cfg.n_embd if cfg.proj else cfg.n_embd
        if self.act == "swiglu":  # keep parameters ~equal to a ratio-r MLP
            hidden = max(8, int(2 * hidden / 3) // 8 * 8)
            self.c_gate = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias) if cfg.proj else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.act == "relu":
            h = F.relu(h)
        elif self.act == "gelu":
            h = F.gelu(h)
        elif self.act == "relu2":  # ReLU squared (modded-nanogpt): cheap and a little better than GELU
            h = relu2(h)
        else:
            h = F.silu(self.c_gate(x)) * h
        if self.c_proj is not None:
            h = self.c_proj(h)
        return self.dropout(h)


def _norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd)
    return nn.Identity()


class Block(nn.Module):
    """Attention (tokens talk to each other) then MLP (each token thinks on its own)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.residual = cfg.residual
        self.ln_1 = _norm(cfg) if cfg.attn != "none" else None
        self.attn = None
        if cfg.attn != "none":
            self.attn = (LoopAttention if cfg.attn_impl == "loop" else FusedAttention)(cfg)
        self.ln_2 = _norm(cfg) if cfg.mlp else None
        self.mlp = MLP(cfg) if cfg.mlp else None

    def forward(self, x, kv=None, pos0=0, fixed: bool = False, ve=None):
        if self.attn is not None:
            a = self.attn(self.ln_1(x), kv, pos0, fixed, ve)  # ve: GPT's value embedding for this layer, or None
            x = x + a if self.residual else a  # residual: gradients flow straight down the stack
        if self.mlp is not None:
            m = self.mlp(self.ln_2(x))
            x = x + m if self.residual else m
        return x


def value_embed_layers(cfg: GPTConfig) -> list[int]:
    """The layers with a value embedding: every other one, counted back from the last (nanochat).
    Each table is V x C, as large as wte: one per layer would multiply the embedding parameters by
    n_layer; half of them, the last layer always included, is nanochat's trade."""
    return [i for i in range(cfg.n_layer) if (cfg.n_layer - 1 - i) % 2 == 0] if cfg.value_embeds else []


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size < 1:
            raise ValueError("GPTConfig.vocab_size must be set (from the tokenizer) before building a GPT")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.form_rem = self.form_end = None  # form="clause": where the next token is in its clause
        if cfg.form != "none":
            self.form_rem = nn.Embedding(formpos.REM_IDS, cfg.n_embd)  # characters left in the clause
            self.form_end = nn.Embedding(formpos.END_IDS, cfg.n_embd)  # what ends it: ，/。/newline
            # token classes (slot, mark, newline) to read a window's form off its text: formpos.attach, not saved
            self.register_buffer("form_classes", torch.zeros(cfg.vocab_size, dtype=torch.uint8), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        has_block = cfg.attn != "none" or cfg.mlp
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer if has_block else 0))
        # x0_lambdas: block i reads resid_lambdas[i] * x + x0_lambdas[i] * x0 (see _block_input);
        # 1-D, so AdamW does not decay them (optim._adamw) and Muon never takes them
        self.resid_lambdas = self.x0_lambdas = None
        if cfg.x0_lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(len(self.h)))
            self.x0_lambdas = nn.Parameter(torch.zeros(len(self.h)))
        self.ln_f = _norm(cfg)
        if cfg.head == "adaptive":  # adaptive softmax: cheap for rare tokens (losses.AdaptiveHead)
            self.lm_head = AdaptiveHead(cfg.n_embd, cfg.vocab_size, cfg.adaptive_cutoffs())
        else:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix both reads and writes tokens
        self.apply(self._init_weights)
        if self.form_rem is not None:  # zero: a form model starts as the plain one (measured better, docs/compose.md)
            nn.init.zeros_(self.form_rem.weight), nn.init.zeros_(self.form_end.weight)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if cfg.zero_init_proj:  # each block starts as the identity: easier early optimisation
                    nn.init.zeros_(p)
                else:  # GPT-2: scale residual projections by depth
                    nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * max(1, cfg.n_layer)))
        # value_embeds: a (V, C) table per chosen layer, keyed by layer; outside h.* so Muon leaves them to AdamW.
        # Zero, as the form embeddings: the model starts as the plain one. Made last, drawing no random
        # numbers, so a seed gives the plain model's very weights (an A/B measures the switch alone)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding.from_pretrained(
            torch.zeros(cfg.vocab_size, cfg.n_embd), freeze=False) for i in value_embed_layers(cfg)})

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, self.config.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, self.config.init_std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Every parameter; non_embedding: less the lookup tables added to the inputs or values (wpe,
        form, value embeddings), as nanoGPT counts (wte stays: it is, or is as large as, the head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            lookups = (self.wpe, self.form_rem, self.form_end, *self.value_embeds.values())
            n -= sum(e.weight.numel() for e in lookups if e is not None)
        return n

    def new_kv_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, device or p.device, dtype or p.dtype)

    def _add_form(self, x: torch.Tensor, form: torch.Tensor | None) -> torch.Tensor:
        """x + the form embeddings; form (B, T, 2) [remaining, end] ids, None = unknown (tianci.formpos)."""
        if self.form_rem is None:
            return x
        form = formpos.unknown(x.size(0), x.size(1), device=x.device) if form is None else form
        return x + self.form_rem(form[..., 0]) + self.form_end(form[..., 1])

    def _block_input(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """What block i reads. x0_lambdas: a learned mix of the stream and x0, the first block's
        input taken raw, not normed: every block norms its input itself (ln_1), and at 1 and 0 the
        mix is exactly the plain model's stream (also on the rungs without a norm)."""
        if self.x0_lambdas is None:
            return x
        return self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0

    def _value_embed(self, i: int, idx: torch.Tensor) -> torch.Tensor | None:
        """Layer i's value embedding of the tokens idx (B, T) -> (B, T, C), or None."""
        key = str(i)
        return self.value_embeds[key](idx) if key in self.value_embeds else None

    def hidden(self, idx: torch.Tensor, kv_cache: KVCache | None = None, form: torch.Tensor | None = None):
        """Final hidden states (B, T, C) after ln_f: everything but the vocabulary projection."""
        B, T = idx.shape
        pos0 = kv_cache.pos if kv_cache is not None else 0
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of {pos0 + T} tokens exceeds block_size={self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos0, pos0 + T, device=idx.device))  # where each token is
        x = x0 = self.drop(self._add_form(x, form))
        for i, block in enumerate(self.h):
            kv = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i])
            x = block(self._block_input(i, x, x0), kv, pos0, ve=self._value_embed(i, idx))
        if kv_cache is not None:
            kv_cache.advance(T)  # the cache now holds these T positions too
        return self.ln_f(x)

    def decode_step(self, idx: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    form: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, 1) new tokens, row b's at position pos[b] (pos: (B,) long tensor) -> logits (B, V);
        writes the tokens' keys/values into the cache: k, v are indexable per layer (a KVCache's k/v
        tensors (n_layer, B, nh, block_size, hs), or lists of (B, nh, block_size, hs)).
        The same function as forward(idx, kv_cache=...) for one token, written with fixed shapes
        for torch.compile (tianci.decode); rows may stand at different positions, as the batched
        engine's slots do (tianci.engine). form: (B, 1, 2), as in hidden."""
        x = self.wte(idx)  # (B, 1, C)
        if self.wpe is not None:
            x = x + self.wpe(pos)[:, None]  # each row's own position
        x = x0 = self._add_form(x, form)
        for i, block in enumerate(self.h):
            x = block(self._block_input(i, x, x0), (k[i], v[i]), pos, fixed=True, ve=self._value_embed(i, idx))
        return self.logits(self.ln_f(x))[:, -1, :]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, V) logits; the adaptive head returns exact log-probabilities (same softmax)."""
        if self.config.head == "adaptive":
            return self.lm_head.log_prob(x)
        logits = self.lm_head(x)
        c = self.config.logit_softcap
        return c * torch.tanh(logits / c) if c > 0 else logits

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, return_logits: bool = True,
                form: torch.Tensor | None = None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With return_logits=False and targets given, the loss is computed chunk by chunk without
        materialising the (B*T, V) logits (the trainer's fast path); logits is then None.
        form (a form model): (B, T, 2) ids of where each next token is in its clause (the composer's);
        None: with targets (idx shifted by one), read off the text itself, else unknown (tianci.formpos)."""
        if form is None and targets is not None and self.form_rem is not None:
            form = formpos.for_training(idx, targets, self.form_classes, self.training)
        x = self.hidden(idx, kv_cache, form)
        if targets is None:
            return self.logits(x), None
        if self.config.head == "adaptive":  # its loss never needs the full V-way logits either
            loss = self.lm_head.loss(x.reshape(-1, x.size(-1)), targets.reshape(-1))
            return (self.logits(x) if return_logits else None), loss
        if not return_logits:
            loss = linear_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                        softcap=self.config.logit_softcap)
            return None, loss
        logits = self.logits(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward = 3x forward; 2 FLOPs per multiply-add),
        counting matmuls and attention scores at full context (nanoGPT / PaLM appendix B). Lookups
        (wte, wpe, form and value embeddings) are no matmuls; the lambdas' scalings are negligible."""
        cfg = self.config
        n = sum(p.numel() for name, p in self.named_parameters()
                if p.dim() == 2 and not name.startswith(("wte", "wpe", "form_", "value_embeds", "lm_head")))
        head = self.lm_head.flops_per_token() if cfg.head == "adaptive" else 0
        if cfg.head == "full":
            n += self.lm_head.weight.numel()
        attn = 0
        if cfg.attn != "none":
            attn = len(self.h) * 2 * cfg.block_size * cfg.n_embd  # q.k and att.v, average ~T/2 each
        return 6 * n + 6 * attn + head


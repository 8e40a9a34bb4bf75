"""Which transformers architecture computes exactly what a tianci GPT computes, and the weights
mapped both ways.

tianci's switches (config.GPTConfig) map onto four stock architectures:

    gpt2   pos="learned" + norm="layernorm" + a plain MLP (relu | gelu | relu2)
    arcee  pos="rope" + norm="rmsnorm" + a plain MLP (relu | gelu | relu2)     (ci-cpu)
    llama  pos="rope" + norm="rmsnorm" + mlp_act="swiglu"
    qwen3  pos="rope" + norm="rmsnorm" + mlp_act="swiglu" + qk_norm

Anything else (no norm, no residual, logit soft-capping, ...) has no exact target and is refused
with an ExportError naming the switch. Pitfalls handled here, each with a test:
- RoPE layout: tianci rotates interleaved channel pairs (0,1), (2,3), ...; transformers rotates
  the two halves (rotate_half). The q/k output rows of every head are permuted to match.
- biases: tianci's q/k/v projections never have one; GPT-2 always has them (written as zeros),
  LayerNorm(bias=False) gets a zero bias; importing refuses biases tianci cannot hold.
- norm epsilon: nn.LayerNorm uses 1e-5; tianci's RMSNorm (and QK-norm) use eps=None, which torch
  reads as float32's machine epsilon.
- GPT-2's Conv1D stores weights transposed.
Tied embeddings are stored once (transformers re-ties lm_head to the input embedding).
"""

from __future__ import annotations

import math

import torch

from ..config import GPTConfig
from ..errors import ParameterError, TianciError

ROPE_THETA = 10000.0  # tianci's _rope base
LN_EPS = 1e-5  # nn.LayerNorm's default
RMS_EPS = float(torch.finfo(torch.float32).eps)  # nn.RMSNorm(eps=None) / F.rms_norm in float32
PLAIN_ACTS = {"relu": "relu", "gelu": "gelu", "relu2": "relu2"}  # tianci mlp_act -> transformers hidden_act
CAUSAL_LM = {"gpt2": "GPT2LMHeadModel", "arcee": "ArceeForCausalLM", "llama": "LlamaForCausalLM",
             "qwen3": "Qwen3ForCausalLM"}


class ExportError(ParameterError):
    """No outside architecture computes what this config computes; names the switch to change."""


class UnsupportedModelError(TianciError):
    """A transformers folder tianci cannot hold exactly (the message names the field)."""


def _refuse(param: str, value, allowed: str, why: str):
    raise ExportError(param, value, allowed, why)


def choose(cfg: GPTConfig) -> str:
    """The transformers model_type that represents cfg exactly, or an ExportError naming the switch."""
    none = "no transformers architecture has it"
    if cfg.form != "none":
        _refuse("form", cfg.form, "none", "a form-aware model adds embeddings of each position's place in its clause "
                "(tianci.formpos), computed from the text: no transformers or GGUF architecture has them")
    if cfg.x0_lambdas:  # to_hf maps known tensors only: without this refusal the lambdas would be dropped silently
        _refuse("x0_lambdas", True, "false", "each block reads a learned mix of the stream and the embeddings "
                "(resid_lambdas, x0_lambdas): no transformers or GGUF architecture has it")
    if cfg.value_embeds:
        _refuse("value_embeds", True, "false", "token embeddings added to the attention values (value_embeds.*): "
                "no transformers or GGUF architecture has them")
    if cfg.attn == "none":
        _refuse("attn", cfg.attn, "single|multi", f"a model without attention: {none}")
    for name in ("mlp", "residual", "proj"):
        if not getattr(cfg, name):
            _refuse(name, False, "true", f"a block without it: {none}")
    if cfg.logit_softcap > 0:
        _refuse("logit_softcap", cfg.logit_softcap, "0", "soft-capped logits: the architectures that cap "
                "(Gemma 2, NanoChat) also change the norms or embeddings")
    if cfg.norm == "layernorm":
        if cfg.pos != "learned":
            _refuse("pos", cfg.pos, "learned (with norm='layernorm', as GPT-2) or norm='rmsnorm'", none)
        if cfg.mlp_act not in PLAIN_ACTS:
            _refuse("mlp_act", cfg.mlp_act, "relu|gelu|relu2 (GPT-2)", "GPT-2 has no gated MLP")
        if cfg.qk_norm:
            _refuse("qk_norm", True, "false (GPT-2)", "GPT-2 has no QK-norm")
        return "gpt2"
    if cfg.norm == "rmsnorm":
        if cfg.pos != "rope":
            _refuse("pos", cfg.pos, "rope (with norm='rmsnorm', as Llama)", none)
        if cfg.mlp_act == "swiglu":
            if cfg.qk_norm and cfg.bias:
                _refuse("bias", True, "false (Qwen3, the QK-norm architecture, has no MLP biases)", none)
            return "qwen3" if cfg.qk_norm else "llama"
        if cfg.qk_norm:
            _refuse("qk_norm", True, "false with mlp_act relu|gelu|relu2 (Arcee), or mlp_act='swiglu' (Qwen3)",
                    "no architecture pairs QK-norm with an ungated MLP")
        return "arcee"
    _refuse("norm", cfg.norm, "layernorm|rmsnorm", f"a model without normalisation: {none}")


def mlp_hidden(cfg: GPTConfig) -> int:
    """The MLP width tianci builds (model.MLP): ratio * n_embd, or ~2/3 of it for SwiGLU."""
    hidden = cfg.mlp_ratio * cfg.n_embd
    return max(8, int(2 * hidden / 3) // 8 * 8) if cfg.mlp_act == "swiglu" else hidden


def rope_perm(hs: int) -> torch.Tensor:
    """Row order that turns interleaved pairs (0,1),(2,3).. into halves (0,hs/2),(1,hs/2+1)..."""
    return torch.cat([torch.arange(0, hs, 2), torch.arange(1, hs, 2)])


def permute_heads(w: torch.Tensor, nh: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the output rows of every head of a (nh*hs, C) projection (or a (nh*hs,) bias)."""
    return w.reshape(nh, -1, *w.shape[1:])[:, perm].reshape(w.shape).contiguous()


# ----------------------------------------------------------------------------- config

def hf_config(cfg: GPTConfig, model_type: str) -> dict:
    """transformers config.json for cfg (float32, no special tokens: the corpus has none)."""
    common = dict(model_type=model_type, architectures=[CAUSAL_LM[model_type]], vocab_size=cfg.vocab_size,
                  tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, use_cache=True,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None, dtype="float32")
    if model_type == "gpt2":
        return dict(common, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.heads, n_inner=mlp_hidden(cfg), activation_function=PLAIN_ACTS[cfg.mlp_act],
                    resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                    layer_norm_epsilon=LN_EPS, scale_attn_weights=True)
    d = dict(common, hidden_size=cfg.n_embd, intermediate_size=mlp_hidden(cfg), num_hidden_layers=cfg.n_layer,
             num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, head_dim=cfg.head_size,
             hidden_act="silu" if cfg.mlp_act == "swiglu" else PLAIN_ACTS[cfg.mlp_act],
             max_position_embeddings=cfg.block_size, rms_norm_eps=RMS_EPS,
             rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
             attention_bias=cfg.bias, attention_dropout=cfg.dropout)
    if model_type == "qwen3":
        return dict(d, use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return dict(d, mlp_bias=cfg.bias)


def _get(hf: dict, key: str, want=None):
    if key not in hf:
        raise UnsupportedModelError(f"config.json has no {key!r}", param=key)
    v = hf[key]
    if want is not None and v != want:
        raise UnsupportedModelError(f"config.json {key}={v!r}: tianci only holds {want!r}", param=key, allowed=repr(want))
    return v


def _close(hf: dict, key: str, want: float):
    v = float(_get(hf, key))
    if not math.isclose(v, want, rel_tol=1e-6):
        raise UnsupportedModelError(f"config.json {key}={v!r}: tianci's norm uses {want!r}", param=key, allowed=repr(want))


def config_from_hf(hf: dict) -> GPTConfig:
    """The GPTConfig that computes what a supported transformers config computes (or UnsupportedModelError)."""
    mt = hf.get("model_type")
    if mt not in CAUSAL_LM:
        raise UnsupportedModelError(f"model_type={mt!r} is not supported: expected {'|'.join(CAUSAL_LM)}",
                           param="model_type", allowed="|".join(CAUSAL_LM))
    tie = bool(hf.get("tie_word_embeddings", True))
    if mt == "gpt2":
        act = _get(hf, "activation_function")
        mlp_act = {v: k for k, v in PLAIN_ACTS.items()}.get(act)
        if mlp_act is None:
            raise UnsupportedModelError(f"activation_function={act!r}: tianci's MLP has relu|gelu|relu2 "
                               "(gelu_new, GPT-2's tanh approximation, is not exact)", param="activation_function")
        _close(hf, "layer_norm_epsilon", LN_EPS)
        C = int(_get(hf, "n_embd"))
        inner = hf.get("n_inner") or 4 * C
        if inner % C:
            raise UnsupportedModelError(f"n_inner={inner} is not a multiple of n_embd={C}", param="n_inner")
        return GPTConfig(vocab_size=int(_get(hf, "vocab_size")), block_size=int(_get(hf, "n_positions")),
                         n_layer=int(_get(hf, "n_layer")), n_head=int(_get(hf, "n_head")), n_embd=C, bias=True,
                         pos="learned", norm="layernorm", attn_impl="sdpa", mlp_act=mlp_act,
                         mlp_ratio=inner // C, tie_embeddings=tie).validate()
    C, nh = int(_get(hf, "hidden_size")), int(_get(hf, "num_attention_heads"))
    _get(hf, "num_key_value_heads", nh)
    if hf.get("head_dim") not in (None, C // nh):
        raise UnsupportedModelError(f"head_dim={hf['head_dim']}: tianci's heads are hidden_size/num_attention_heads",
                           param="head_dim")
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", ROPE_THETA)}
    if rope.get("rope_type", "default") != "default" or float(rope.get("rope_theta", 0)) != ROPE_THETA:
        raise UnsupportedModelError(f"rope_parameters={rope}: tianci's RoPE is the default one with theta {ROPE_THETA:g}",
                           param="rope_parameters")
    _close(hf, "rms_norm_eps", RMS_EPS)
    act = _get(hf, "hidden_act")
    if mt == "arcee":
        mlp_act = {v: k for k, v in PLAIN_ACTS.items()}.get(act)
    else:
        mlp_act = "swiglu" if act == "silu" else None
    if mlp_act is None:
        raise UnsupportedModelError(f"hidden_act={act!r} is not one tianci's {mt} layout has", param="hidden_act")
    bias = bool(hf.get("attention_bias", False))
    if mt != "qwen3" and bool(hf.get("mlp_bias", False)) != bias:
        raise UnsupportedModelError("attention_bias and mlp_bias differ: tianci has one bias switch", param="mlp_bias")
    if hf.get("use_sliding_window"):
        raise UnsupportedModelError("use_sliding_window=true: tianci attends over the whole context",
                           param="use_sliding_window")
    cfg = GPTConfig(vocab_size=int(_get(hf, "vocab_size")), block_size=int(_get(hf, "max_position_embeddings")),
                    n_layer=int(_get(hf, "num_hidden_layers")), n_head=nh, n_embd=C, bias=bias, pos="rope",
                    norm="rmsnorm", attn_impl="sdpa", mlp_act=mlp_act, qk_norm=mt == "qwen3",
                    tie_embeddings=tie)
    inter = int(_get(hf, "intermediate_size"))
    ratio = next((r for r in range(1, 65) if mlp_hidden(GPTConfig(n_embd=C, mlp_ratio=r, mlp_act=mlp_act)) == inter),
                 None)
    if ratio is None:
        raise UnsupportedModelError(f"intermediate_size={inter} is no width tianci builds for n_embd={C} "
                           f"(mlp_act={mlp_act})", param="intermediate_size")
    cfg.mlp_ratio = ratio
    return cfg.validate()


# ----------------------------------------------------------------------------- weights

def to_hf(sd: dict, cfg: GPTConfig, model_type: str) -> dict[str, torch.Tensor]:
    """tianci state dict (fused "c_attn" layout, see convert_attention_state) -> transformers
    tensors of `model_type`. Tied embeddings are written once (as the input embedding)."""
    C, nh, hs = cfg.n_embd, cfg.heads, cfg.head_size
    out: dict[str, torch.Tensor] = {}
    ln_b = cfg.norm == "layernorm" and cfg.bias
    if model_type == "gpt2":
        def ln(src, dst):
            out[f"{dst}.weight"] = sd[f"{src}.weight"]
            out[f"{dst}.bias"] = sd[f"{src}.bias"] if ln_b else torch.zeros(C)

        def lin(src, dst, zero_bias: bool):  # Conv1D: (in, out)
            out[f"{dst}.weight"] = sd[f"{src}.weight"].t().contiguous()
            has = f"{src}.bias" in sd and not zero_bias
            out[f"{dst}.bias"] = sd[f"{src}.bias"] if has else torch.zeros(sd[f"{src}.weight"].shape[0])

        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            s, d = f"h.{i}", f"transformer.h.{i}"
            ln(f"{s}.ln_1", f"{d}.ln_1")
            lin(f"{s}.attn.c_attn", f"{d}.attn.c_attn", zero_bias=True)  # tianci's qkv has no bias
            lin(f"{s}.attn.c_proj", f"{d}.attn.c_proj", zero_bias=False)
            ln(f"{s}.ln_2", f"{d}.ln_2")
            lin(f"{s}.mlp.c_fc", f"{d}.mlp.c_fc", zero_bias=False)
            lin(f"{s}.mlp.c_proj", f"{d}.mlp.c_proj", zero_bias=False)
        ln("ln_f", "transformer.ln_f")
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return _f32(out)
    perm = rope_perm(hs)
    out["model.embed_tokens.weight"] = sd["wte.weight"]
    for i in range(cfg.n_layer):
        s, d = f"h.{i}", f"model.layers.{i}"
        out[f"{d}.input_layernorm.weight"] = sd[f"{s}.ln_1.weight"]
        q, k, v = sd[f"{s}.attn.c_attn.weight"].split(C)
        a = f"{d}.self_attn"
        out[f"{a}.q_proj.weight"] = permute_heads(q, nh, perm)
        out[f"{a}.k_proj.weight"] = permute_heads(k, nh, perm)
        out[f"{a}.v_proj.weight"] = v.contiguous()
        out[f"{a}.o_proj.weight"] = sd[f"{s}.attn.c_proj.weight"]
        if cfg.bias:  # attention_bias covers q/k/v/o; tianci only has o's
            for n in ("q", "k", "v"):
                out[f"{a}.{n}_proj.bias"] = torch.zeros(C)
            out[f"{a}.o_proj.bias"] = sd[f"{s}.attn.c_proj.bias"]
        if cfg.qk_norm:  # tianci's QK-norm has no weight: ones are the same function
            out[f"{a}.q_norm.weight"] = torch.ones(hs)
            out[f"{a}.k_norm.weight"] = torch.ones(hs)
        out[f"{d}.post_attention_layernorm.weight"] = sd[f"{s}.ln_2.weight"]
        m = f"{d}.mlp"
        names = [("c_fc", "up_proj"), ("c_proj", "down_proj")] + ([("c_gate", "gate_proj")]
                                                                    if cfg.mlp_act == "swiglu" else [])
        for src, dst in names:
            out[f"{m}.{dst}.weight"] = sd[f"{s}.mlp.{src}.weight"]
            if cfg.bias:
                out[f"{m}.{dst}.bias"] = sd[f"{s}.mlp.{src}.bias"]
    out["model.norm.weight"] = sd["ln_f.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return _f32(out)


def _f32(out: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def from_hf(hf: dict, cfg: GPTConfig, model_type: str) -> dict[str, torch.Tensor]:
    """The inverse of to_hf: transformers tensors -> tianci state dict (fused layout). Refuses
    (UnsupportedModelError) tensors tianci has no place for: non-zero q/k/v biases, QK-norm weights that
    are not ones, biases where cfg has none."""
    C, nh, hs = cfg.n_embd, cfg.heads, cfg.head_size
    hf = dict(hf)
    sd: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise UnsupportedModelError(f"weights: {name} is missing", param=name)
        return hf.pop(name)

    def must_be(name: str, value: float):
        t = take(name)
        if not bool((t == value).all()):
            raise UnsupportedModelError(f"weights: {name} is not all {value:g}; tianci's layout has no such parameter",
                               param=name)

    if model_type == "gpt2":
        ln_b = cfg.bias

        def ln(src, dst):
            sd[f"{dst}.weight"] = take(f"{src}.weight")
            if ln_b:
                sd[f"{dst}.bias"] = take(f"{src}.bias")
            else:
                must_be(f"{src}.bias", 0.0)

        def lin(src, dst, keep_bias: bool):
            sd[f"{dst}.weight"] = take(f"{src}.weight").t().contiguous()
            if keep_bias:
                sd[f"{dst}.bias"] = take(f"{src}.bias")
            else:
                must_be(f"{src}.bias", 0.0)

        sd["wte.weight"] = take("transformer.wte.weight")
        sd["wpe.weight"] = take("transformer.wpe.weight")
        for i in range(cfg.n_layer):
            s, d = f"transformer.h.{i}", f"h.{i}"
            ln(f"{s}.ln_1", f"{d}.ln_1")
            lin(f"{s}.attn.c_attn", f"{d}.attn.c_attn", keep_bias=False)
            lin(f"{s}.attn.c_proj", f"{d}.attn.c_proj", keep_bias=ln_b)
            ln(f"{s}.ln_2", f"{d}.ln_2")
            lin(f"{s}.mlp.c_fc", f"{d}.mlp.c_fc", keep_bias=ln_b)
            lin(f"{s}.mlp.c_proj", f"{d}.mlp.c_proj", keep_bias=ln_b)
        ln("transformer.ln_f", "ln_f")
    else:
        inv = torch.argsort(rope_perm(hs))
        sd["wte.weight"] = take("model.embed_tokens.weight")
        for i in range(cfg.n_layer):
            s, d = f"model.layers.{i}", f"h.{i}"
            a = f"{s}.self_attn"
            sd[f"{d}.ln_1.weight"] = take(f"{s}.input_layernorm.weight")
            q = permute_heads(take(f"{a}.q_proj.weight"), nh, inv)
            k = permute_heads(take(f"{a}.k_proj.weight"), nh, inv)
            sd[f"{d}.attn.c_attn.weight"] = torch.cat([q, k, take(f"{a}.v_proj.weight")])
            sd[f"{d}.attn.c_proj.weight"] = take(f"{a}.o_proj.weight")
            if cfg.bias:
                for n in ("q", "k", "v"):
                    must_be(f"{a}.{n}_proj.bias", 0.0)
                sd[f"{d}.attn.c_proj.bias"] = take(f"{a}.o_proj.bias")
            if cfg.qk_norm:
                must_be(f"{a}.q_norm.weight", 1.0)
                must_be(f"{a}.k_norm.weight", 1.0)
            sd[f"{d}.ln_2.weight"] = take(f"{s}.post_attention_layernorm.weight")
            names = [("c_fc", "up_proj"), ("c_proj", "down_proj")] + ([("c_gate", "gate_proj")]
                                                                        if cfg.mlp_act == "swiglu" else [])
            for dst, src in names:
                sd[f"{d}.mlp.{dst}.weight"] = take(f"{s}.mlp.{src}.weight")
                if cfg.bias:
                    sd[f"{d}.mlp.{dst}.bias"] = take(f"{s}.mlp.{src}.bias")
        sd["ln_f.weight"] = take("model.norm.weight")
    if cfg.tie_embeddings:
        head = hf.pop("lm_head.weight", None)  # some writers store the tied copy too
        if head is not None and not torch.equal(head, sd["wte.weight"]):
            raise UnsupportedModelError("tie_word_embeddings=true but lm_head.weight differs from the embedding",
                               param="tie_word_embeddings")
    else:
        sd["lm_head.weight"] = take("lm_head.weight")
    left = [k for k in hf if not k.endswith(("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq"))]
    if left:
        raise UnsupportedModelError(f"weights tianci has no place for: {left[:4]}", param=left[0])
    return sd


def convert_attention_state(sd: dict, cfg: GPTConfig, to: str) -> dict:
    """Map weights between the loop ("heads.{i}.query/key/value") and fused ("c_attn") layouts,
    so the two implementations can be compared with identical weights."""
    out, nh, hs = dict(sd), cfg.heads, cfg.head_size
    for i in range(cfg.n_layer):
        p = f"h.{i}.attn."
        if to == "sdpa" and f"{p}heads.0.query.weight" in out:
            ws = [torch.cat([out.pop(f"{p}heads.{h}.{n}.weight") for h in range(nh)])
                  for n in ("query", "key", "value")]
            out[f"{p}c_attn.weight"] = torch.cat(ws)
        elif to == "loop" and f"{p}c_attn.weight" in out:
            q, k, v = out.pop(f"{p}c_attn.weight").split(cfg.n_embd)
            for n, w in (("query", q), ("key", k), ("value", v)):
                for h in range(nh):
                    out[f"{p}heads.{h}.{n}.weight"] = w[h * hs:(h + 1) * hs].clone()
    return out

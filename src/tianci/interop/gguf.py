"""A run as one GGUF file that llama.cpp (and llama-cpp-python, Ollama, LM Studio) runs, with the
tokenizer inside.

The weights go through the transformers layout (arch.to_hf) and are renamed to llama.cpp's
tensor names, as llama.cpp's own convert_hf_to_gguf.py does. llama.cpp architectures:

    arcee   RoPE + RMSNorm + ReLU^2 MLP     (ci-cpu)
    llama   RoPE + RMSNorm + SwiGLU
    qwen3   RoPE + RMSNorm + SwiGLU + QK-norm

RoPE layout: llama.cpp's "arcee" and "llama" rotate interleaved pairs (its NORM rope type), as
tianci does, so their q/k rows go back to tianci's order; "qwen3" rotates halves (NEOX), as
transformers does, so it keeps the permuted rows. Weights are float32 (exact; the models are small).

llama.cpp needs an end-of-text id, and tianci's vocabularies have no such token (a poem ends with a
blank line): the file names one the model (nearly) never writes -- for the BPE the byte 0xFF, which
never occurs in UTF-8 text; for the character table its last character (the rarest code point
range). Stop on "\\n\\n" instead (llama-cpp-python: stop=["\\n\\n"]).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint as ck
from ..errors import TianciError
from . import arch
from .hf import fused_state
from ..tokenizer import _byte_alphabet
from .tokens import gguf_vocab

GGUF_ARCH = {"arcee": "arcee", "llama": "llama", "qwen3": "qwen3"}
NEOX_ROPE = {"qwen3"}  # llama.cpp rotates halves for these; interleaved pairs for the others
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def gguf_arch(cfg) -> str:
    """The llama.cpp architecture for cfg, or an ExportError naming the switch."""
    mt = arch.choose(cfg)
    if mt == "gpt2":
        raise arch.ExportError("pos", cfg.pos, "rope (with norm='rmsnorm')",
                               "llama.cpp's GPT-2 computes GELU with the tanh approximation only; "
                               "export --format hf for this run")
    if cfg.bias:
        raise arch.ExportError("bias", True, "false", f"llama.cpp's {mt} has no biases")
    return GGUF_ARCH[mt]


def gguf_tensors(sd: dict, cfg, name: str) -> dict[str, torch.Tensor]:
    """tianci weights (fused layout) -> llama.cpp tensor names, float32."""
    mt = arch.choose(cfg)
    hf = arch.to_hf(sd, cfg, mt)
    inv = torch.argsort(arch.rope_perm(cfg.head_size))
    out = {}
    for k, v in hf.items():
        if k in _TOP_NAMES:
            out[_TOP_NAMES[k]] = v
            continue
        parts = k.split(".")  # model.layers.{i}.rest
        i, rest = parts[2], ".".join(parts[3:])
        if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight") and name not in NEOX_ROPE:
            v = arch.permute_heads(v, cfg.heads, inv)  # back to interleaved pairs
        out[f"blk.{i}.{_LAYER_NAMES[rest]}"] = v
    return out


def end_token(tok) -> int:
    """The id llama.cpp is told ends a text (see the module docstring)."""
    tokens, _ = gguf_vocab(tok)
    if tok.kind == "bpe":
        ff = next(c for c, b in _byte_alphabet().items() if b == 0xFF)
        if ff in tokens:
            return tokens.index(ff)
    return len(tokens) - 1


def export_gguf(run_dir, out, *, which: str = "best", force: bool = False) -> dict:
    """Write the run as one GGUF file; returns {"arch", "path", "tensors"}."""
    try:
        import gguf
    except ModuleNotFoundError:
        raise TianciError("--format gguf needs the gguf package: pip install 'tianci[interop]'",
                          param="format") from None
    run = ck.load_run(run_dir, which=which)
    cfg = run.preset.model
    name = gguf_arch(cfg)
    out = Path(out)
    if out.suffix != ".gguf":
        raise TianciError(f"--out {out}: a GGUF export is one file ending in .gguf", param="out")
    if out.exists() and not force:
        raise TianciError(f"--out {out} already exists; pass --force to overwrite it", param="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = gguf_tensors(fused_state(run.model), cfg, name)
    tokens, merges = gguf_vocab(run.tokenizer)
    eos = end_token(run.tokenizer)
    tmp = out.with_name(f".{out.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), name)
    w.add_name(run.preset.name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(arch.mlp_hidden(cfg))
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.heads)
    w.add_key_length(cfg.head_size)
    w.add_value_length(cfg.head_size)
    w.add_rope_dimension_count(cfg.head_size)
    w.add_rope_freq_base(arch.ROPE_THETA)
    w.add_layer_norm_rms_eps(arch.RMS_EPS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    for k, v in tensors.items():
        w.add_tensor(k, v.numpy())
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    tmp.replace(out)
    return {"arch": name, "path": str(out), "tensors": len(tensors), "end_token": eos}

"""`tianci import`: a transformers folder (gpt2, arcee, llama, qwen3 layouts tianci can hold
exactly) as a tianci run that sample, compose and serve read."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--from", dest="src", required=True, help="transformers folder (config.json, "
                   "*.safetensors, tokenizer.json)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing run at --out")


def run(args) -> int:
    from ..interop.hf import import_hf
    info = import_hf(args.src, args.out, force=args.force)
    c = info["config"]
    print(f"tianci import: {info['model_type']} -> run {args.out} ({c['n_layer']} layers, width {c['n_embd']}, "
          f"pos={c['pos']}, norm={c['norm']}, mlp_act={c['mlp_act']})")
    return 0

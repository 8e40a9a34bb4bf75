"""`tianci export`: a run as a Hugging Face transformers folder or a GGUF file (docs/elsewhere.md)."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: a transformers folder; gguf: one .gguf file for llama.cpp")
    p.add_argument("--out", required=True, help="folder (hf) or file ending in .gguf (gguf)")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="which weights to export")
    p.add_argument("--force", action="store_true", help="overwrite an earlier export at --out")


def run(args) -> int:
    if args.format == "hf":
        from ..interop.hf import export_hf
        info = export_hf(args.run, args.out, which=args.which, force=args.force)
        print(f"tianci export: {info['model_type']} folder -> {args.out} ({', '.join(info['files'])})")
    else:
        from ..interop.gguf import export_gguf
        info = export_gguf(args.run, args.out, which=args.which, force=args.force)
        print(f"tianci export: GGUF ({info['arch']}, {info['tensors']} tensors, float32) -> {info['path']}")
    return 0

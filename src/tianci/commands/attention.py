"""`tianci attention --run DIR --text ...`: draw every head's attention over a line of text."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a GPT run directory (the +self-attention rung or later)")
    p.add_argument("--text", required=True, help="the text to look at, e.g. a line of poetry")
    p.add_argument("--layer", type=int, default=0, help="which layer's heads to draw (default 0)")
    p.add_argument("--out", default="attention.png", help="PNG file to write (default attention.png)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="which checkpoint to load")


def run(args) -> int:
    import torch

    from ..checkpoint import load_run
    from ..errors import TianciError
    from ..measure.plot import attention_weights, plot_attention

    run = load_run(args.run, which=args.which)
    ids = run.tokenizer.encode(args.text)
    if not ids:
        raise TianciError("--text is empty")
    ids = ids[-run.model.config.block_size:]  # the model sees at most block_size tokens
    w = attention_weights(run.model, torch.tensor([ids], dtype=torch.long), args.layer)
    tokens = [run.tokenizer.token_text(i) for i in ids]
    out = plot_attention(w, tokens, args.out, title=f"{Path(args.run).resolve().name}: layer {args.layer}, {w.shape[0]} head(s)")
    print(f"wrote {out}")
    return 0

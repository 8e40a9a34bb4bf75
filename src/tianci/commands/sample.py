from __future__ import annotations

import sys

from ..errors import TianciError


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new poem)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-at-end", action="store_true", help="stop each sample at the end of its poem")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (as the tutorial)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step (pays off for long samples; CUDA graphs on a GPU)")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="which weights to load")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8 weights for faster decoding (slightly different outputs; see docs/speed.md)")


def run(args) -> int:
    from ..checkpoint import read_config

    if args.num_samples < 1 or args.num_samples > 64:
        raise TianciError(f"--num-samples {args.num_samples} is out of range 1..64")
    cfg = read_config(args.run)
    if cfg.get("kind") == "ngram":
        from ..ngram import sample_run
        for i, text in enumerate(sample_run(args.run, args.prompt, args.max_new_tokens, args.temperature,
                                            args.seed, args.num_samples)):
            print(f"--- sample {i + 1}\n{text}")  # sample_run's texts already start with the prompt
        return 0
    from ..checkpoint import load_run
    from ..runtime import compute_init
    from ..generate import SampleOptions, encode_prompt, stream

    opts = SampleOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop_at_end=args.stop_at_end,
                         use_cache=not args.no_cache, compiled=args.compile).validate()
    device = compute_init(args.device, ddp=False).device  # a device this machine lacks: one clear error
    r = load_run(args.run, device=str(device), which=args.which, quantize=args.quantize)
    encode_prompt(r.tokenizer, args.prompt)  # an unknown character fails here, before any output
    if args.compile:
        from ..decode import can_compile
        if not can_compile(r.model):
            print("tianci sample: warning: --compile needs the fused attention (attn_impl=sdpa); "
                  "decoding eagerly", file=sys.stderr)
    for i in range(args.num_samples):  # one at a time so the terminal streams each poem in order
        if opts.seed is not None:
            opts.seed = args.seed + i
        print(f"--- sample {i + 1}")
        sys.stdout.write(args.prompt)
        for ev in stream(r.model, r.tokenizer, args.prompt, 1, opts):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        print()
    return 0

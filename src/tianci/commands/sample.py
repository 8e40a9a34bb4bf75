from __future__ import annotations

import sys

from ..errors import TianciError
from ..sampling import CONTINUE_SAMPLING, add_sampling_flags


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new poem)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=200)
    add_sampling_flags(p, CONTINUE_SAMPLING)
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
        ignored = not_for_counting(args)
        if ignored:  # warn, not refuse: the sample itself is still what was asked for
            print(f"tianci sample: warning: {', '.join(ignored)} do not apply to a counting run "
                  f"(only --prompt --num-samples --max-new-tokens --temperature --seed do); ignored",
                  file=sys.stderr)
        for i, text in enumerate(sample_run(args.run, args.prompt, args.max_new_tokens, args.temperature,
                                            args.seed, args.num_samples)):
            print(f"--- sample {i + 1}\n{text}")  # sample_run's texts already start with the prompt
        return 0
    from ..checkpoint import load_run
    from ..runtime import compute_init
    from ..generate import SampleOptions, encode_prompt, stream

    opts = SampleOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, min_p=args.min_p, presence_penalty=args.presence_penalty,
                         frequency_penalty=args.frequency_penalty, seed=args.seed, stop_at_end=args.stop_at_end,
                         use_cache=not args.no_cache).validate()
    device = compute_init(args.device, ddp=False).device  # a device this machine lacks: one clear error
    r = load_run(args.run, device=str(device), which=args.which, quantize=args.quantize)
    encode_prompt(r.tokenizer, args.prompt)  # an unknown character fails here, before any output
    decoder = compile_first(r.model, args.max_new_tokens * args.num_samples) if args.compile else None
    for i in range(args.num_samples):  # one at a time so the terminal streams each poem in order
        if opts.seed is not None:
            opts.seed = args.seed + i
        print(f"--- sample {i + 1}")
        sys.stdout.write(args.prompt)
        for ev in stream(r.model, r.tokenizer, args.prompt, 1, opts, decoder=decoder):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        print()
    return 0


# flags of a GPT sample that a counting (n-gram) run has no use for: (flag, set?)
S = CONTINUE_SAMPLING
GPT_ONLY = (("--stop-at-end", lambda a: a.stop_at_end), ("--top-k", lambda a: a.top_k != S.top_k),
            ("--top-p", lambda a: a.top_p != S.top_p), ("--min-p", lambda a: a.min_p != S.min_p),
            ("--presence-penalty", lambda a: a.presence_penalty != S.presence_penalty),
            ("--frequency-penalty", lambda a: a.frequency_penalty != S.frequency_penalty),
            ("--quantize", lambda a: a.quantize != "none"), ("--compile", lambda a: a.compile),
            ("--no-cache", lambda a: a.no_cache),
            ("--which", lambda a: a.which != "best"), ("--device", lambda a: a.device != "cpu"))

# below this many tokens, eager decoding finishes before the compile would (measured: 100 tokens of
# ci-cpu took 34 s with --compile and 5 s without on a 2-core CPU)
COMPILE_PAYS_OFF = 2000


def not_for_counting(args) -> list[str]:
    return [flag for flag, given in GPT_ONLY if given(args)]


def compile_first(model, total_tokens: int):
    """The model's `decode.CompiledDecoder`, its step compiled now, saying what it costs, rather
    than as a silent pause before the first token; None when the model cannot use one."""
    import time

    from ..decode import CompiledDecoder

    decoder = CompiledDecoder(model)
    if not decoder.available():
        print("tianci sample: warning: --compile needs the fused attention (attn_impl=sdpa); "
              "decoding eagerly", file=sys.stderr)
        return None
    if total_tokens < COMPILE_PAYS_OFF:
        print(f"tianci sample: note: --compile pays a one-off compile (tens of seconds on a CPU) that "
              f"{total_tokens} tokens will not win back; without it they start at once", file=sys.stderr)
    t = time.perf_counter()
    if decoder.step(1) is not None:
        print(f"tianci sample: compiled the decoding step in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return decoder

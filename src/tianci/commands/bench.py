"""`tianci bench`: training and decoding speed of the fast and classic paths, side by side; with
--speedrun, the record preset against the nanoGPT-style baseline, time to a target val loss."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import load_preset
from ..errors import TianciError
from ..flags import add_config_flags, apply_overrides
from ..measure import speedrun as sr

CI_VOCAB = 6104  # the ci corpus's character vocabulary: the default --vocab-size (synthetic tokens)


def add_arguments(p) -> None:
    p.add_argument("--preset", default="nanogpt-cpu", help="training config to benchmark (default nanogpt-cpu)")
    p.add_argument("--decode-preset", default="ci-gpu",
                   help="model config for the decoding benchmark (default ci-gpu: the tutorial's 6x384, block 256)")
    p.add_argument("--run", default=None,
                   help="a trained run: decode with its weights and config (instead of --decode-preset with random "
                   "weights) and measure what int8 weights cost its val loss")
    p.add_argument("--steps", type=int, default=20, help="training steps per variant per round (0 = skip training)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    p.add_argument("--variants", default="fast,classic,tutorial", help="comma list of fast,classic,tutorial")
    p.add_argument("--decode-tokens", type=int, default=200, help="new tokens per decode run (0 = skip decoding)")
    p.add_argument("--decode-compile", action="store_true",
                   help="also time the torch.compile'd decoding step (compile time reported apart)")
    p.add_argument("--decode-max-s", type=float, default=60.0, help="stop a decode run after this many seconds")
    p.add_argument("--no-malloc-tune", action="store_true", help="leave glibc malloc at its defaults")
    p.add_argument("--peak-size", type=int, default=2048, help="matmul size for the measured peak (default 2048)")
    p.add_argument("--bf16-peak", action="store_true", help="also measure the bf16 matmul peak")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' = stdout)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: torch's choice; with --speedrun: 1 per run)")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    g = p.add_argument_group("speedrun (the presets as they are: the config flags below do not apply)")
    g.add_argument("--speedrun", action="store_true",
                   help="train the record preset and the nanoGPT-style baseline side by side, one process each, to "
                   "--target or --cap; print the time each needed and the ratio")
    g.add_argument("--target", type=float, default=sr.TARGET, help=f"val loss to reach, nats/char (default {sr.TARGET})")
    g.add_argument("--cap", type=float, default=sr.CAP_S,
                   help=f"stop a run after this many seconds wall (default {sr.CAP_S:.0f})")
    g.add_argument("--record", default=sr.RECORD, help=f"the record preset (default {sr.RECORD})")
    g.add_argument("--baseline", default=sr.BASELINE, help=f"the baseline preset (default {sr.BASELINE})")
    g.add_argument("--baseline-iters", type=int, default=sr.BASELINE_ITERS,
                   help=f"the baseline's --max-iters and --lr-decay-iters (default {sr.BASELINE_ITERS}, as the paired "
                   "nanoGPT run; 0 = the preset's own)")
    g.add_argument("--data", default=None, help="prepared data directory (default $TIANCI_DATA or data/ci)")
    g.add_argument("--speedrun-out", default="runs/speedrun",
                   help="where the two runs and their logs go (default runs/speedrun)")
    add_config_flags(p, sections=("model", "train"))


def run(args) -> int:
    import sys

    from ..measure.bench import format_table, run_bench

    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.speedrun:
        res = sr.speedrun(args.data or os.environ.get("TIANCI_DATA", "data/ci"), args.speedrun_out, record=args.record,
                       baseline=args.baseline, target=args.target, cap_s=args.cap, threads=args.threads or 1,
                       baseline_iters=args.baseline_iters, log=log)
        _report(sr.format_speedrun(res), res, args.json)
        return 0 if res["runs"]["record"]["stopped"] != "error" and res["runs"]["baseline"]["stopped"] != "error" else 1

    variants = tuple(v for v in args.variants.split(",") if v)
    bad = [v for v in variants if v not in ("fast", "classic", "tutorial")]
    if bad or not variants:
        raise TianciError(f"--variants {args.variants!r}: expected a comma list of fast,classic,tutorial")
    if args.steps < 0 or args.rounds < 1 or args.decode_tokens < 0:
        raise TianciError("--steps and --decode-tokens must be >= 0, --rounds >= 1")
    preset = apply_overrides(load_preset(args.preset), args)
    if preset.model.vocab_size == 0:
        preset.model.vocab_size = CI_VOCAB
    dec, state = None, None
    if args.run:
        from ..checkpoint import load_run
        r = load_run(args.run)
        dec, state = r.preset, r.model.state_dict()
        dec.model.dropout = 0.0
    elif args.decode_tokens > 0:
        dec = load_preset(args.decode_preset)
        dec.model.vocab_size = preset.model.vocab_size
        dec.model.dropout = 0.0
    res = run_bench(preset, dec, device=preset.train.device, steps=args.steps, rounds=args.rounds,
                    decode_tokens=args.decode_tokens, decode_max_s=args.decode_max_s,
                    malloc=not args.no_malloc_tune, variants=variants, bf16_peak=args.bf16_peak,
                    peak_n=args.peak_size, decode_state=state, quality_run=args.run,
                    decode_compile=args.decode_compile, threads=args.threads, log=log)
    _report(format_table(res), res, args.json)
    return 0


def _report(table: str, res: dict, json_to: str | None) -> None:
    print(table)
    text = json.dumps(res, indent=2)
    if json_to == "-":
        print(text)
    elif json_to:
        Path(json_to).parent.mkdir(parents=True, exist_ok=True)
        Path(json_to).write_text(text + "\n", encoding="utf-8")

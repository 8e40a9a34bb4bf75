"""`tianci ladder`: train every rung on one budget and print the comparison table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import TianciError
from ..sampling import CONTINUE_SAMPLING


def add_arguments(p) -> None:
    from ..measure.ladder import RUNGS

    p.add_argument("--budget-seconds", type=float, default=None,
                   help="wall-clock training seconds per rung (default 60, or none with --token-budget)")
    p.add_argument("--token-budget", type=int, default=None, help="at most this many training tokens per rung")
    p.add_argument("--rungs", nargs="+", default=list(RUNGS), metavar="RUNG",
                   help=f"presets to train, in order (default: {' '.join(RUNGS)})")
    p.add_argument("--data", default=os.environ.get("TIANCI_DATA", "data/ci"), help="prepared data directory")
    p.add_argument("--out", default="runs/ladder", help="output directory (runs, per-rung results, table, chart)")
    p.add_argument("--prompt", default="春", help="prompt of every rung's sample (default 春)")
    p.add_argument("--seed", type=int, default=1337, help="training and sampling seed, shared by all rungs")
    p.add_argument("--temperature", type=float, default=CONTINUE_SAMPLING.temperature,
                   help=f"sampling temperature (default {CONTINUE_SAMPLING.temperature})")
    p.add_argument("--bpe-vocab", type=int, default=None, metavar="N",
                   help="also train the last GPT rung on a BPE copy of the data with this vocabulary size")
    p.add_argument("--device", default="cpu", help="cpu (default, comparable timings) | cuda | auto")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: tiny models, stable timings on a shared machine; "
                        "0 = all cores)")
    p.add_argument("--force", action="store_true", help="retrain every rung even if a finished result exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..measure.ladder import LadderOptions, markdown, run_ladder

    budget = args.budget_seconds
    if budget is None and not args.token_budget:
        budget = 60.0
    unknown = [r for r in args.rungs if not _known(r)]
    if unknown:
        from ..config import preset_names
        raise TianciError(f"--rungs: unknown preset(s) {', '.join(unknown)}; known: {', '.join(preset_names())}")
    opts = LadderOptions(data=Path(args.data), out=Path(args.out), rungs=tuple(args.rungs), budget_seconds=budget,
                         token_budget=args.token_budget, prompt=args.prompt, seed=args.seed,
                         temperature=args.temperature, bpe_vocab=args.bpe_vocab, device=args.device,
                         threads=args.threads, force=args.force, progress=not args.quiet)
    report = run_ladder(opts)
    print(markdown(report))
    skipped = [r["rung"] for r in report["rungs"] if r.get("skipped")]
    if skipped:
        print(f"(reused finished rungs: {', '.join(skipped)}; --force retrains them)", file=sys.stderr)
    print(f"wrote {opts.out}/ladder.md, ladder.json, ladder.png, curves.png", file=sys.stderr)
    return 0


def _known(name: str) -> bool:
    from ..config import preset_names

    return name in preset_names() or (name.endswith(".toml") and Path(name).exists())

"""`tianci eval --run DIR`: the run's exact loss on a whole split (tianci.measure.score), where the
trainer logs an estimate from a few random batches."""

from __future__ import annotations

from ..errors import ParameterError
from ..measure.score import SPLITS


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory (a GPT run)")
    p.add_argument("--split", choices=SPLITS, default="val", help="which split of the run's data (default val)")
    p.add_argument("--data", default=None, help="data directory (default: the one the run was trained on)")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="which weights to load")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass, 1..4096 (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or mps (default cpu)")


def run(args) -> int:
    from ..checkpoint import load_run
    from ..measure.score import score_split
    from ..runtime import pick_device

    if not 1 <= args.batch_size <= 4096:
        raise ParameterError("batch-size", args.batch_size, "1..4096")
    r = load_run(args.run, device=str(pick_device(args.device)), which=args.which)
    s = score_split(r, args.split, args.data, args.batch_size)
    per_token = (f", {s.fields[f'{s.split}_loss_per_token']:.4f} nats/token"
                 if f"{s.split}_loss_per_token" in s.fields else "")
    print(f"{args.run} ({args.which}): {s.split} {s.fields[f'{s.split}_loss']:.4f} nats/char "
          f"({s.fields[f'{s.split}_bpc']:.3f} bits/char{per_token}) over the whole {s.split} split of {s.data_dir}: "
          f"{s.windows:,} windows of {s.tokens // s.windows}, {s.tokens:,} predictions")
    return 0

"""`tianci plot RUN_DIR...`: train/val loss curves of runs by step, tokens and wall time."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    p.add_argument("--out", default="loss.png", help="PNG file to write (default loss.png)")
    p.add_argument("--labels", nargs="+", default=None, help="legend labels (default: the directory names)")
    p.add_argument("--title", default=None)


def run(args) -> int:
    from ..errors import TianciError
    from ..measure.plot import plot_runs

    if args.labels and len(args.labels) != len(args.runs):
        raise TianciError(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
    print(f"wrote {plot_runs(args.runs, args.out, args.labels, args.title)}")
    return 0

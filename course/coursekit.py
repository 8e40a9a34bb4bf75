"""The few helpers every chapter shares: where the data and runs live, the short (CI) mode, the
exercise checker, printing library source, tracing tensor shapes, and training a ladder rung.

Everything here calls tianci's public API; nothing re-implements it. Chapters import it as
`from coursekit import *` (the notebook's folder, course/, is the working directory).
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
import time
from pathlib import Path

COURSE = Path(__file__).resolve().parent
REPO = COURSE.parent
if str(REPO / "src") not in sys.path and (REPO / "src" / "tianci").is_dir():
    # A checkout without `pip install -e .` still finds the library next to the course.
    sys.path.insert(0, str(REPO / "src"))

# TIANCI_COURSE_FAST=1 (CI) cuts every training budget to a few steps: the chapter still runs
# every cell, only the numbers are less trained. Readers leave it unset.
FAST = os.environ.get("TIANCI_COURSE_FAST", "") not in ("", "0")
DATA = Path(os.environ.get("TIANCI_COURSE_DATA") or REPO / "data" / "ci")
RUNS = Path(os.environ.get("TIANCI_COURSE_RUNS") or REPO / "runs" / "course")
LN2 = math.log(2)

__all__ = ["COURSE", "REPO", "FAST", "DATA", "RUNS", "LN2", "budget", "tianci_cli", "data_dir",
           "check", "show_source", "trace_shapes", "train_rungs", "rung_table", "docs_ladder_row", "docs_rows",
           "show_image", "Timer"]


def budget(normal, fast):
    """The normal value, or the short one when TIANCI_COURSE_FAST=1."""
    return fast if FAST else normal


def tianci_cli(*args: str, quiet: bool = False, torchrun: int = 0, tail: int = 0) -> str:
    """Run `python -m tianci ARGS...` exactly as in a terminal; print and return its output
    (only its last `tail` lines, if given). torchrun=N launches it as
    `torchrun --standalone --nproc_per_node=N -m tianci ARGS...`."""
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else []
    if torchrun:
        env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores
    cmd = [sys.executable, *launcher, "-m", "tianci", *map(str, args)]
    if not quiet:
        shown = f"torchrun --standalone --nproc_per_node={torchrun} -m tianci" if torchrun else "tianci"
        print(f"$ {shown} " + " ".join(map(str, args)))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    out = (p.stdout + p.stderr).strip()
    if not quiet and out:
        print("\n".join(out.splitlines()[-tail:]) if tail else out)
    if p.returncode != 0:
        raise RuntimeError(f"`tianci {' '.join(map(str, args))}` failed (exit {p.returncode}):\n{out}")
    return out


def data_dir() -> Path:
    """The prepared ci corpus (chapter 0 makes it; any later chapter makes it if it is missing).

    `tianci prepare` reads the poems from $TIANCI_POETRY_SOURCE (a local chinese-poetry copy),
    else downloads them once from GitHub."""
    if not (DATA / "meta.json").is_file():
        tianci_cli("prepare", "--out", DATA, "--quiet")
    import json
    meta = json.loads((DATA / "meta.json").read_text(encoding="utf-8"))
    if meta.get("tokenizer") != "char":
        raise RuntimeError(f"{DATA} holds {meta.get('tokenizer')!r} tokens; the course needs the character "
                           "tokenizer: set TIANCI_COURSE_DATA to another folder")
    return DATA


def check(what: str, got, expected, tol: float = 0.0) -> None:
    """The exercise checker: compare your answer with a value recomputed independently."""
    if got is None:
        raise AssertionError(f"{what}: 还没有答案 / no answer yet (got None)")
    if isinstance(expected, float) or isinstance(got, float):
        ok = abs(float(got) - float(expected)) <= tol + 1e-9 * max(1.0, abs(float(expected)))
    else:
        ok = got == expected
    if not ok:
        raise AssertionError(f"{what}: 答案不对 / not right: got {got!r}, expected {expected!r}"
                             + (f" (± {tol})" if tol else ""))
    print(f"✓ {what}: {got!r} — 正确 / correct")


def show_source(obj, *needles: str, context: int = 0) -> None:
    """Print the source of `obj` straight from the installed library, with file and line numbers.

    With needles, print only the lines that contain one of them (and `context` lines around);
    a needle that matches nothing is an error, so a chapter notices when the library changes."""
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj))
    try:
        path = path.relative_to(REPO)
    except ValueError:
        pass
    keep = set(range(len(lines)))
    if needles:
        keep = set()
        for nd in needles:
            hits = [i for i, ln in enumerate(lines) if nd in ln]
            if not hits:
                raise LookupError(f"{obj.__qualname__}: no line contains {nd!r} (the library changed?)")
            for i in hits:
                keep.update(range(max(0, i - context), min(len(lines), i + context + 1)))
    print(f"# {path} — {obj.__qualname__}")
    prev = None
    for i in sorted(keep):
        if prev is not None and i != prev + 1:
            print("    ...")
        print(f"{start + i:4d}  {lines[i].rstrip()}")
        prev = i


def trace_shapes(model, idx, depth: int = 3) -> None:
    """Run one forward pass and print every module's output shape, in the order they run."""
    import torch

    rows, hooks = [], []
    for name, mod in model.named_modules():
        if name.count(".") >= depth or name == "":
            continue

        def hook(m, inp, out, name=name):
            o = out[0] if isinstance(out, tuple) else out
            if isinstance(o, torch.Tensor):
                rows.append((name, type(m).__name__, tuple(o.shape)))
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits, _ = model(idx)
    finally:
        for h in hooks:
            h.remove()
    print(f"{'idx':<24} {'(input)':<16} {tuple(idx.shape)}")
    for name, kind, shape in rows:
        print(f"{name:<24} {kind:<16} {shape}")
    print(f"{'logits':<24} {'(output)':<16} {tuple(logits.shape)}")


def train_rungs(names, token_budget: int | None = None) -> list[dict]:
    """Train ladder rungs (tianci's presets) the way `tianci ladder --token-budget N` does: the
    same data, the same number of tokens, the same seed, and a 40-character sample from 春.
    A rung already trained with the same settings (say, by the chapter before) is reused."""
    import torch
    from tianci.measure.ladder import LadderOptions, rung_preset, run_rung

    token_budget = token_budget or budget(150_000, 8_000)
    opts = LadderOptions(data=data_dir(), out=RUNS / "ladder", budget_seconds=None,
                         token_budget=token_budget, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and kind to a shared machine
    rows = []
    try:
        for name in names:
            t0 = time.perf_counter()
            row = run_rung(name, rung_preset(name, opts), opts.data, opts)
            row["wall"] = time.perf_counter() - t0
            rows.append(row)
            how = "reused" if row.get("skipped") else f"trained in {row['wall']:.1f}s"
            print(f"{name:<12} {how:<18} val {row['val_loss']:.3f} nats/char ({row['val_bpc']:.2f} bits)")
    finally:
        torch.set_num_threads(threads)
    return rows


def rung_table(rows: list[dict]) -> None:
    """A small comparison table, each rung against the one before it."""
    print(f"{'rung':<12} {'params':>9} {'steps':>6} {'tokens':>8} {'val nats':>9} {'bits':>6} {'Δ':>7}  sample")
    prev = None
    for r in rows:
        d = "" if prev is None else f"{r['val_loss'] - prev:+.3f}"
        sample = r["sample"].replace("\n", " / ")
        print(f"{r['rung']:<12} {r['params']:>9,} {r['steps']:>6} {r['tokens']:>8,} {r['val_loss']:>9.3f} "
              f"{r['val_bpc']:>6.2f} {d:>7}  {sample}")
        prev = r["val_loss"]


def docs_ladder_row(rung: str) -> dict:
    """The row of the measured table in docs/ladder.md for this rung (column name -> text),
    so a chapter can print the documented figures beside its own."""
    lines = (REPO / "docs" / "ladder.md").read_text(encoding="utf-8").splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| rung |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    for ln in lines[header + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if cells[0] == rung:
            return dict(zip(cols, cells))
    raise LookupError(f"docs/ladder.md has no row for rung {rung!r}")


def docs_rows(names) -> None:
    """Print the documented figures of these rungs (docs/ladder.md, 60 s per rung) under the
    chapter's own table, so the two can be read side by side."""
    width = max(len(n) for n in names)
    for r in names:
        d = docs_ladder_row(r)
        print(f"docs/ladder.md, 60 s per rung: {r:<{width}} val {d['val nats/char (bits)']}  Δ {d['Δ val']:>7}  "
              f"({d['tokens seen']} tokens)")


def show_image(path) -> None:
    """Show a PNG inline (Jupyter, VS Code); elsewhere just say where it is."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
        if get_ipython() is not None:
            display(Image(filename=str(path)))
            return
    except ImportError:
        pass
    print(f"(picture: {path})")


class Timer:
    """with Timer() as t: ...; t.seconds"""

    def __init__(self):
        self.t0 = 0.0
        self.seconds = 0.0

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False

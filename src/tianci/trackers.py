"""Where a training run reports: the terminal (`Display`: a progress bar or plain lines, and a
warning when the machine is too busy), and the run's metrics.jsonl (`RunLog`) mirrored into the
experiment trackers people already use (optional extras).

`--log tensorboard` writes event files under RUN/tb (pip install tianci[track]);
`--log wandb` logs to Weights & Biases, offline unless WANDB_MODE says otherwise, so it works
without an account (sync later with `wandb sync RUN/wandb/...`)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from .checkpoint import Run
from .errors import TianciError


class Tracker:
    def log(self, rec: dict) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TianciError("--log tensorboard needs the tensorboard package: pip install 'tianci[track]'") from None
        self.w = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self.w.add_text("config", "```\n" + str(config) + "\n```")

    def log(self, rec: dict) -> None:
        step = rec.get("step", 0)
        prefix = "eval/" if rec.get("eval") else "train/"
        for k, v in rec.items():
            if k not in ("step", "eval") and isinstance(v, (int, float)):
                self.w.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        self.w.close()


class WandbTracker(Tracker):
    def __init__(self, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise TianciError("--log wandb needs the wandb package: pip install wandb") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project="tianci", dir=str(run_dir), config=config, name=Path(run_dir).name)

    def log(self, rec: dict) -> None:
        prefix = "eval/" if rec.get("eval") else "train/"
        self.run.log({prefix + k: v for k, v in rec.items() if k not in ("step", "eval")}, step=rec.get("step"))

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str, run_dir: Path, config: dict) -> Tracker | None:
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, config)
    if kind == "wandb":
        return WandbTracker(run_dir, config)
    return None


class RunLog:
    """The trainer's records: one JSON line each in the run's metrics.jsonl, mirrored into the
    tracker chosen by --log. Only the master process writes (`enabled`); a context manager, so the
    tracker is closed however the loop ends."""

    def __init__(self, run_dir: Path, kind: str, config: dict, enabled: bool):
        self.run, self.enabled = Run(run_dir), enabled
        self.tracker = make_tracker(kind, Path(run_dir), config) if enabled else None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def log(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.run.append_metrics(rec)
        if self.tracker is not None:
            self.tracker.log(rec)


def truncate_metrics(run_dir: Path, step: int) -> bool:
    """Drop log lines past `step`, the checkpoint a run resumes from (a killed run logs steps it never
    saved; a kill can also leave half a line), so a resumed log reads as one clean run. True when
    the evaluation at `step` is already logged (the resumed loop need not evaluate it again)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return False
    keep, evaluated = [], False
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            if rec["step"] <= step:
                keep.append(rec)
                evaluated = evaluated or bool(rec.get("eval") and rec["step"] == step)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    Run(run_dir).write_metrics(keep)
    return evaluated


# ----------------------------------------------------------------------------- the terminal

LINE_EVERY_S = 10.0  # without a terminal: one progress line this often
SLOW_FACTOR = 4.0    # warn when training runs this many times slower than the machine predicts
# Training reaches about this fraction of the probe's matmul speed on a quiet machine. Measured on a
# 2-core Xeon (AVX-512), torch 2.13 CPU, float32: ci-cpu and nanogpt-cpu train at 43-49% of the
# 2048^3 matmul peak (docs/speed.md); on the same machine busy with other jobs, ci-cpu ran at 427
# tokens/s = 2.6% of its 512^3 probe. Far below this fraction, something else is using the machine.
TRAIN_EFFICIENCY = 0.4


def expected_tokens_per_s(flops_per_token: float, probe_gflops: float) -> float:
    """Tokens/s this machine should train at: the matmul probe's FLOP/s times the fraction of it
    training reaches, over the model's training FLOPs per token."""
    return probe_gflops * 1e9 * TRAIN_EFFICIENCY / max(flops_per_token, 1.0)


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def slow_advice(tok_per_s: float, expected: float, max_time: float, max_iters: int, step: int,
                elapsed: float, tokens_per_step: int) -> str | None:
    """Plain words for a run far slower than the machine should manage, and what it costs the
    model; None when the rate is within SLOW_FACTOR of what is expected."""
    if tok_per_s <= 0 or expected <= 0 or tok_per_s * SLOW_FACTOR >= expected:
        return None
    head = (f"warning: training runs at {tok_per_s:,.0f} tokens/s, {expected / tok_per_s:.0f}x below the "
            f"~{expected:,.0f} this machine's measured matmul speed predicts for this model: the machine is "
            f"busy (or torch has few threads). ")
    if max_time > 0:
        left = max(0.0, max_time - elapsed)
        now = step + left * tok_per_s / tokens_per_step
        could = step + left * expected / tokens_per_step
        return head + (f"At this rate the {_duration(max_time)} budget reaches ~{min(now, max_iters):,.0f} steps "
                       f"instead of ~{min(could, max_iters):,.0f}: expect a worse model.")
    left = max(0, max_iters - step) * tokens_per_step
    return head + (f"At this rate the {max_iters:,} steps take ~{_duration(elapsed + left / tok_per_s)} "
                   f"instead of ~{_duration(elapsed + left / expected)}.")


class Display:
    """Progress on stderr: on a terminal a bar over the budget in force (seconds for a time budget,
    else steps); otherwise a plain line every LINE_EVERY_S seconds, so piped runs and the ladder are
    not silent. Also says once, plainly, when the run is far slower than this machine should be."""

    def __init__(self, tc, model, compute, tokens_per_step: int, step: int, enabled: bool):
        self.enabled, self.tc, self.tokens_per_step = enabled, tc, tokens_per_step
        self.timed = tc.max_time > 0
        self.bar = None
        self.loss, self.tok_per_s = math.nan, 0.0
        self.last_line = time.perf_counter()
        self.expected, self.warned, self.first_step = 0.0, False, step
        if not enabled:
            return
        from .runtime import matmul_peak
        # a matmul about as wide as the model's own (a narrow model cannot use the machine's peak either)
        n = 2048 if compute.device.type == "cuda" else min(512, max(64, 4 * model.config.n_embd))
        probe = matmul_peak(compute.dtype, compute.device, n=n, budget_s=0.2)
        self.expected = expected_tokens_per_s(model.flops_per_token(), probe["gflops"]) * compute.world
        if sys.stderr.isatty():
            from tqdm import tqdm
            if self.timed:
                self.bar = tqdm(total=round(tc.max_time), desc="train", unit="s", file=sys.stderr, dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}")
            else:
                self.bar = tqdm(total=tc.max_iters, initial=step, desc="train", unit="step", dynamic_ncols=True,
                                file=sys.stderr)

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def rate(self, loss: float, tok_per_s: float) -> None:
        """The latest logged train loss and tokens/s."""
        self.loss, self.tok_per_s = loss, tok_per_s
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_per_s:,.0f}", refresh=False)

    def update(self, step: int, elapsed: float) -> None:
        if not self.enabled:
            return
        if not self.warned and step - self.first_step >= 20 and self.tok_per_s > 0:
            self.warned = True  # judged once, on a logged rate past the first (warm-up) steps
            advice = slow_advice(self.tok_per_s, self.expected, self.tc.max_time, self.tc.max_iters, step,
                                 elapsed, self.tokens_per_step)
            if advice:
                self.write(advice)
        if self.bar is not None:
            if self.timed:
                self.bar.n = min(round(elapsed), self.bar.total)
                self.bar.set_postfix_str(f" step {step:,}  loss {self.loss:.3f}  {self.tok_per_s:,.0f} tok/s",
                                         refresh=False)
                self.bar.refresh()
            else:
                self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last_line >= LINE_EVERY_S:
            self.last_line = now
            budget = (f"{elapsed:.0f}/{self.tc.max_time:.0f} s ({elapsed / self.tc.max_time:.0%})" if self.timed
                      else f"{step / max(1, self.tc.max_iters):.0%}")
            of = f"/{self.tc.max_iters:,}" if not self.timed else ""
            print(f"train: step {step:,}{of}  {budget}  loss {self.loss:.3f}  {self.tok_per_s:,.0f} tok/s",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

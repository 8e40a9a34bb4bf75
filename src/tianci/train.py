"""The trainer: AdamW (or Muon), warmup + cosine, clipping, accumulation, evals in nats and bits
per character, checkpoints that resume bit-exactly, and DDP when launched by torchrun.

Batches are a pure function of (seed, step, micro-batch index) (tianci.batches): resuming needs no
data position beyond the step, and 1 and N processes train on identical data.

Faults lose nothing: a non-finite loss stops the run before anything is saved (the last finite
checkpoint stays), and SIGTERM / SIGINT end the current step, write a checkpoint and stop.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint as ck
from . import formpos
from .batches import Batches, batch_seed, token_counts
from .config import Preset, format_config, to_dict
from .corpus import read_meta
from .errors import Diverged, Interrupted, ParameterError
from .model import GPT
from .optim import build_optimizers, lr_multiplier, schedule_progress, set_lr
from .runtime import Compute, StopSignals, compute_init, sync
from .trackers import Display, RunLog, truncate_metrics


# ----------------------------------------------------------------------------- one optimizer step

@dataclass
class StepResult:
    loss: torch.Tensor  # mean loss over the micro-batches, detached, still on the device (no host sync)
    lr: float


def train_step(fwd, optimizers, tc, step: int, get_batch, *, amp=contextlib.nullcontext,
               progress: float | None = None) -> StepResult:
    """One optimizer step, the same for the trainer and the benchmark: set the scheduled learning
    rate, forward + backward over tc.grad_accum micro-batches (`get_batch(micro) -> (x, y)`), clip
    the gradient norm, step every optimizer, zero the gradients. Under DDP the gradients are
    all-reduced once, on the last micro-batch."""
    lr = set_lr(optimizers, tc, lr_multiplier(step, tc, progress))
    total = None
    for micro in range(tc.grad_accum):
        x, y = get_batch(micro)
        defer_sync = isinstance(fwd, DDP) and micro < tc.grad_accum - 1
        with fwd.no_sync() if defer_sync else contextlib.nullcontext(), amp():
            _, loss = fwd(x, y, return_logits=not tc.fused_loss)
        (loss / tc.grad_accum).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(fwd.parameters(), tc.grad_clip)
    for opt in optimizers:
        opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return StepResult(total / tc.grad_accum, lr)


# ----------------------------------------------------------------------------- training

@dataclass
class Counters:
    """Where the run stands; saved in every checkpoint, restored on resume."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training, over all sessions of the run
    # of those, the seconds spent evaluating and checkpointing at evaluations: elapsed - eval_time is the
    # optimizer steps' own time (a speedrun that evaluates often is not charged for its measuring)
    eval_time: float = 0.0
    tokens: int = 0
    best_val: float = math.inf
    evaluated_at: int = -1  # the step whose evaluation is already logged (set on resume)


class _LogWindow:
    """The train losses and the clock since the last log line: a log line reports their mean and
    the tokens/s over the window. Losses add up on the device (no host sync per step)."""

    def __init__(self, device: torch.device, tokens: int):
        self.loss_sum, self.n = torch.zeros((), device=device), 0
        self.t, self.tokens = time.perf_counter(), tokens

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.n += 1

    def take(self, tokens: int) -> tuple[torch.Tensor, float]:
        """(mean loss, tokens/s) of the window, and a new window starts."""
        now = time.perf_counter()
        mean, rate = self.loss_sum / self.n, (tokens - self.tokens) / max(now - self.t, 1e-9)
        self.loss_sum, self.n, self.t, self.tokens = torch.zeros_like(self.loss_sum), 0, now, tokens
        return mean, rate


def resolve_preset(preset: Preset, meta: dict, data_dir: Path) -> Preset:
    """A copy of `preset` with the data's vocab size (the caller's preset is never changed)."""
    vocab = int(meta["vocab_size"])
    given = preset.model.vocab_size
    if given not in (0, vocab):
        raise ParameterError("vocab_size", given, f"0 (take it from the data) or {vocab}",
                             why=f"the tokenizer of {data_dir} has {vocab} tokens")
    out = copy.deepcopy(preset)
    out.model.vocab_size = vocab
    out.model.validate()
    return out


class Trainer:
    def __init__(self, preset: Preset, data_dir: Path, run_dir: Path, resume: bool = False,
                 compute: Compute | None = None, init_from=None):
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.meta = read_meta(self.data_dir)
        self.preset = resolve_preset(preset, self.meta, self.data_dir)
        self.tc = tc = self.preset.train
        self.compute = compute or compute_init(tc.device, tc.dtype, seed=tc.seed, preset=self.preset)
        self.device = self.compute.device
        self.model = GPT(self.preset.model).to(self.device)
        self.init_from = None  # tianci.finetune.InitFrom when the weights start from another run
        if init_from is not None:
            from .corpus import DataDir
            from .finetune import init_weights
            self.init_from = init_weights(self.model, init_from, DataDir(self.data_dir).tokenizer())
        if self.preset.model.form != "none":  # which tokens are marks: the form of each window's text
            from .corpus import DataDir
            formpos.attach(self.model, DataDir(self.data_dir).tokenizer())
        if self.preset.model.head == "adaptive":  # frequency order for its clusters (resume reloads it)
            self.model.lm_head.set_frequencies(token_counts(self.data_dir / "train.bin", self.meta["dtype"],
                                                            self.preset.model.vocab_size))
        self.optimizers = build_optimizers(self.model, tc, self.device.type)
        self.counters = Counters()
        if resume:
            self._load_state()
        self.fwd = self._wrap(self.model)
        B, T = tc.batch_size, self.preset.model.block_size
        self.tokens_per_step = B * T * tc.grad_accum * self.compute.world
        self.train_batches = Batches(self.data_dir / "train.bin", self.meta["dtype"], T, B, self.device)
        self.val_batches = Batches(self.data_dir / "val.bin", self.meta["dtype"], T, B, self.device)
        # non-finite detection without a host sync per step: the first bad step, kept on the device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.lr_at: dict[int, float] = {}  # learning rate of each step since the last finiteness check

    def _wrap(self, model):
        """What the step calls: the model, compiled if asked, inside DDP under torchrun."""
        fwd = model
        if self.tc.compile:
            try:
                fwd = torch.compile(model)
            except Exception as e:  # graceful: compilation is an optimisation, not a requirement
                print(f"warning: torch.compile failed ({e}); training uncompiled", file=sys.stderr)
        if self.compute.world > 1:
            fwd = DDP(fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return fwd

    # -- the loop: read it top to bottom
    def fit(self) -> dict:
        tc, c, master = self.tc, self.counters, self.compute.master
        session_start = c.elapsed
        last_ev: dict = {}
        window = _LogWindow(self.device, c.tokens)
        with RunLog(self.run_dir, tc.log, to_dict(self.preset), enabled=master) as log, \
                Display(tc, self.model, self.compute, self.tokens_per_step, c.step,
                        enabled=master and tc.progress) as display, StopSignals() as stop:
            self.model.train()
            # the clock starts here: opening the log and the progress display is not training (on a loaded
            # machine it took over 0.5 ms, and step 0's evaluation showed steps' time that no step had spent)
            t0 = time.perf_counter()
            while True:
                c.elapsed = session_start + (time.perf_counter() - t0)
                signalled, done = self._agree(bool(stop.signum), self._budget_spent())
                if signalled and not done:
                    self.save_checkpoint()
                    raise Interrupted(stop.signum, c.step, self.run_dir)
                if (c.step % tc.eval_interval == 0 or done) and c.evaluated_at != c.step:
                    sync(self.device)  # queued step work counts as steps, not as evaluation
                    t_ev = time.perf_counter()
                    last_ev = self.evaluate_and_log(log, display)
                    done = done or self._target_reached(last_ev)
                    if tc.ckpt_interval == 0 or done:
                        self.save_checkpoint()
                    c.eval_time += time.perf_counter() - t_ev
                if done:
                    break

                res = self.step()
                window.add(res.loss)

                if c.step % tc.log_interval == 0:
                    self.log_train(*window.take(c.tokens), res.lr, session_start + time.perf_counter() - t0,
                                   log, display)
                # after the log line: a kill in between loses no logged step (resume drops later lines)
                if tc.ckpt_interval and c.step % tc.ckpt_interval == 0:
                    self.save_checkpoint()
                display.update(c.step, session_start + (time.perf_counter() - t0))
        final = last_ev if c.evaluated_at == c.step and last_ev else self.evaluate()  # the final eval's numbers
        return {"step": c.step, "time": c.elapsed, "tokens": c.tokens, "best_val": c.best_val, **final}

    # -- named steps of the loop
    def _budget_spent(self) -> bool:
        c = self.counters
        return c.step >= self.tc.max_iters or (self.tc.max_time > 0 and c.elapsed >= self.tc.max_time)

    def _target_reached(self, ev: dict) -> bool:
        """The val loss is at --target-loss (the same verdict on every rank: all stop together)."""
        return self._agree(False, 0 < self.tc.target_loss and ev["val_loss"] <= self.tc.target_loss)[1]

    def step(self) -> StepResult:
        """One optimizer step (train_step) on this rank's batches; the counters move on."""
        c, tc = self.counters, self.tc
        rank, world, step = self.compute.rank, self.compute.world, c.step
        # this rank's slice of the global micro-batches: rank, rank + W, rank + 2W, ...
        res = train_step(self.fwd, self.optimizers, tc, step,
                         lambda micro: self.train_batches.get(batch_seed(tc.seed, step, rank + micro * world)),
                         amp=self.compute.autocast, progress=schedule_progress(tc, step, c.elapsed))
        self._watch(res, step)
        c.step += 1
        c.tokens += self.tokens_per_step
        return res

    def _agree(self, signalled: bool, done: bool) -> tuple[bool, bool]:
        """(stop for a signal, budget spent), the same on every rank: torchrun forwards SIGTERM to
        all ranks but they may see it at different steps, and each rank has its own clock."""
        if self.compute.world == 1:
            return signalled, done
        import torch.distributed as dist
        flags = torch.tensor([int(signalled), int(done)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0].item()), bool(flags[1].item())

    def _watch(self, res: StepResult, step: int) -> None:
        """Remember the first step whose loss is not finite (a device-side op, no sync)."""
        self.lr_at[step] = res.lr
        bad = (self.first_bad < 0) & ~torch.isfinite(res.loss)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check_finite(self, weights: bool = True) -> None:
        """Raise Diverged if a loss since the last check (or, with `weights`, any weight) is not
        finite. Called before every log line, evaluation and checkpoint: no non-finite weights are
        ever saved, and the run stops at most log_interval steps after it diverged."""
        bad = self.first_bad.clone()
        if weights:
            ok = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
            bad = torch.where(~ok & (bad < 0), torch.full_like(bad, self.counters.step), bad)
        if self.compute.world > 1:
            import torch.distributed as dist
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        step = int(bad.item())
        if step >= 0:
            lr = self.lr_at.get(step, self.lr_at.get(step - 1, float("nan")))
            latest = self.run_dir / "latest.json"
            kept = (f"the last finite checkpoint (step {ck.Run(self.run_dir).latest()[2]}) is kept"
                    if latest.exists() else "no checkpoint had been written yet")
            raise Diverged(f"training diverged: the loss became non-finite at step {step} (learning rate "
                           f"{lr:.3g}); stopped without saving, {kept}", param="learning_rate",
                           hints={"cli": "lower --learning-rate or raise --warmup-iters "
                                         f"(resume the kept checkpoint with `tianci train --resume {self.run_dir}`)"})
        self.lr_at.clear()

    def evaluate_and_log(self, log: RunLog, display: Display) -> dict:
        self.check_finite()
        c = self.counters
        ev = self.evaluate()
        c.evaluated_at = c.step
        log.log({"step": c.step, "eval": True, "time": round(c.elapsed, 3),
                 "eval_time": round(c.eval_time, 3), "tokens": c.tokens,
                 **{k: round(v, 5) for k, v in ev.items()}})
        if self.compute.master and ev["val_loss"] < c.best_val:
            c.best_val = ev["val_loss"]
            ck.Run(self.run_dir).save_best(self.model, c.step, ev)
        per_token = f", {ev['val_loss_per_token']:.4f} nats/token" if "val_loss_per_token" in ev else ""
        display.write(f"step {c.step:>6}: train {ev['train_loss']:.4f}  val {ev['val_loss']:.4f} "
                      f"nats/char ({ev['val_bpc']:.3f} bits/char{per_token})")
        return ev

    def log_train(self, mean_loss: torch.Tensor, tok_per_s: float, lr: float, t: float, log: RunLog,
                  display: Display) -> None:
        self.check_finite(weights=False)
        loss = mean_loss.item()  # the only host sync of a step, when logging
        c = self.counters
        log.log({"step": c.step, "time": round(t, 3), "tokens": c.tokens, "lr": lr,
                 **{k: round(v, 5) for k, v in ck.loss_fields("train", loss, self.meta).items()
                    if k != "train_bpc"}, "tok_per_s": round(tok_per_s, 1)})
        display.rate(loss, tok_per_s)

    def save_checkpoint(self) -> None:
        self.check_finite()
        if self.compute.master:
            ck.Run(self.run_dir).save_checkpoint(self.model, self._state(), self.counters.step)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss of each split over the same eval_iters batches at every evaluation (comparable
        numbers), in nats and bits per character, nats per token beside them for BPE data."""
        self.model.eval()
        out = {}
        for split, batches in (("train", self.train_batches), ("val", self.val_batches)):
            losses = []
            for k in range(self.tc.eval_iters):
                x, y = batches.get(batch_seed(self.tc.seed + 7919, 0, k))
                with self.compute.autocast():
                    _, loss = self.model(x, y, return_logits=not self.tc.fused_loss)
                losses.append(loss.item())
            out.update(ck.loss_fields(split, float(np.mean(losses)), self.meta))
        self.model.train()
        return out

    # -- checkpoint state
    def _state(self) -> dict:
        c = self.counters
        return {
            "step": c.step, "elapsed": c.elapsed, "eval_time": c.eval_time, "tokens": c.tokens, "best_val": c.best_val,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "world": self.compute.world,
        }

    def _load_state(self) -> None:
        wpath, spath, _ = ck.Run(self.run_dir).latest()
        ck.load_weights(self.model, wpath)
        st = ck.load_state(spath)
        c = self.counters
        try:
            for opt, sd in zip(self.optimizers, st["optimizers"], strict=True):
                opt.load_state_dict(sd)
            c.step, c.elapsed = int(st["step"]), float(st["elapsed"])
            c.eval_time = float(st.get("eval_time", 0.0))  # runs saved before the counter: none known
            c.tokens, c.best_val = int(st["tokens"]), float(st["best_val"])
            torch.set_rng_state(st["rng"]["torch"])
            random.setstate(st["rng"]["python"])
            np.random.set_state(st["rng"]["numpy"])
            if st["rng"].get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        except (KeyError, ValueError, TypeError) as e:
            raise ck.CheckpointError(f"{spath}: training state does not fit this run ({e})") from None
        if self.compute.master and truncate_metrics(self.run_dir, c.step):
            c.evaluated_at = c.step  # fit() need not evaluate it again


def train(preset: Preset, data_dir, out_dir, *, resume: bool = False, force: bool = False,
          quiet: bool = False, init_from=None) -> dict:
    """Train `preset` on the prepared data in data_dir, writing the run to out_dir; init_from: a run
    directory whose weights the new run starts from (tianci.finetune)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if preset.kind == "ngram":
        from .ngram import train_run
        return train_run(preset, data_dir, out_dir, force=force)
    tc = preset.train
    # the resolved config (bad data or config fail here, before anything is set up): dtype auto probes it
    resolved = resolve_preset(preset, read_meta(data_dir), data_dir)
    compute = compute_init(tc.device, tc.dtype, seed=tc.seed, preset=resolved)
    if compute.dtype_why:  # auto, decided on this CPU: the run records the dtype, so a resume trains in it too
        resolved.train.dtype = str(compute.dtype).removeprefix("torch.")
    try:
        if compute.master and resume:
            ck.Run.resume(out_dir)  # cleans a killed writer's temp files
        # built before the run directory: bad data or config fail before anything is created or cleared
        trainer = Trainer(resolved, data_dir, out_dir, resume=resume, compute=compute, init_from=init_from)
        if compute.master and not resume:
            ck.Run.create(out_dir, force=force)
        if compute.master:
            if not quiet:
                why = f"\n  dtype auto: {compute.dtype_why}" if compute.dtype_why else ""
                print(f"tianci train: {preset.name} -> {out_dir} on {compute.device} ({str(compute.dtype)[6:]})\n"
                      f"{format_config(trainer.preset)}{why}", file=sys.stderr)
            if not resume:
                init = {"init_from": trainer.init_from.record()} if trainer.init_from else {}
                ck.Run(out_dir).begin("gpt", to_dict(trainer.preset), trainer.data_dir, **init)
        compute.barrier()  # rank 0 has created the run dir
        result = trainer.fit()
        # every rank leaves together: a rank that tore the gloo group down while rank 0 was still writing
        # the last checkpoint aborted (`terminate called without an active exception`, 1 in 3 course runs)
        compute.barrier()
        return result
    finally:
        compute.close()


__all__ = ["train_step", "StepResult", "Trainer", "train"]

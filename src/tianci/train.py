"""The trainer: AdamW (or Muon), warmup + cosine, clipping, accumulation, evals in nats and bits
per character, checkpoints that resume bit-exactly, and DDP when launched by torchrun.

Batches are a pure function of (seed, step, micro-batch index): resuming needs no data position
beyond the step, and under DDP rank r takes micro-batches r, r+W, r+2W, ... of the same global
sequence a single process would see with W times the accumulation -- so 1 and N processes train
on identical data.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ck
from .config import Preset, format_config, to_dict
from .corpus import read_meta
from .errors import TianciError
from .model import GPT
from .optim import build_optimizers, lr_multiplier, set_lr


# ----------------------------------------------------------------------------- device & data

def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():  # with an index: torch.cuda.set_device and DDP need one
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TianciError(f"--device {spec}: CUDA is not available on this machine (use cpu or auto)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TianciError(f"--device {spec}: MPS is not available on this machine (use cpu or auto)")
    return dev


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run ~2x fp32 on such CPUs."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def tune_malloc() -> bool:
    """Keep large buffers mapped between steps (glibc only). By default glibc returns big freed
    blocks to the kernel, so every step page-faults its activations and logits back in (system
    time was 10-14x higher). Same effect as MALLOC_MMAP_THRESHOLD_=33554432. Returns success."""
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter ids from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "float32":
        return torch.float32
    if spec == "bfloat16":
        return torch.bfloat16
    if spec == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPU: fp32. Measured: without AVX512-BF16 (Zen3) a bf16 matmul runs ~70x slower than fp32;
    # with it (Zen4) plain bf16 autocast gave ~1.0x because bf16 softmax/attention run ~3x slower.
    # bf16 on CPU stays available as an explicit --dtype bfloat16.
    return torch.float32


class Batches:
    """Random windows from a memmapped token file (nanoGPT format), seeded per (step, micro)."""

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, device: torch.device):
        if not Path(path).exists():
            raise TianciError(f"{path}: token file missing; run `tianci prepare`")
        self.data = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        if len(self.data) <= block_size + 1:
            raise TianciError(f"{path}: only {len(self.data)} tokens, fewer than block_size+1="
                              f"{block_size + 1}; use a smaller --block-size or more text")
        self.block, self.batch, self.device = block_size, batch_size, device
        self.gen = torch.Generator()
        self.offsets = torch.arange(block_size + 1)

    def get(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.gen.manual_seed(seed)
        ix = torch.randint(len(self.data) - self.block - 1, (self.batch,), generator=self.gen)
        rows = torch.from_numpy(self.data[(ix[:, None] + self.offsets).numpy()].astype(np.int64))
        x, y = rows[:, :-1], rows[:, 1:]  # (B, T): y is x shifted by one
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)


def batch_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 4099 + micro) % (2**62)


# ----------------------------------------------------------------------------- DDP

def ddp_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); world_size 1 when not launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ----------------------------------------------------------------------------- training

class Trainer:
    def __init__(self, preset: Preset, data_dir: Path, run_dir: Path, resume: bool = False):
        self.preset, self.tc = preset, preset.train
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.rank, local_rank, self.world = ddp_info()
        self.master = self.rank == 0
        if self.world > 1:
            import torch.distributed as dist
            if self.tc.device in ("auto",) and torch.cuda.is_available():
                self.tc.device = f"cuda:{local_rank}"
            backend = "nccl" if self.tc.device.startswith("cuda") else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)
        self.device = pick_device(self.tc.device)
        if self.device.type == "cpu":
            tune_malloc()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = pick_dtype(self.tc.dtype, self.device)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not cpu_has_bf16() and self.master:
            print("warning: --dtype bfloat16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated "
                  "and much slower than float32", file=sys.stderr)
        self.meta = read_meta(self.data_dir)
        self.preset.model.vocab_size = int(self.meta["vocab_size"])
        self.preset.model.validate()
        torch.manual_seed(self.tc.seed + self.rank)
        self.model = GPT(self.preset.model).to(self.device)
        self.optimizers = build_optimizers(self.model, self.tc, self.device.type)
        self.step, self.elapsed, self.tokens, self.best_val = 0, 0.0, 0, math.inf
        if resume:
            self._load_state()
        self.fwd = self.model
        if self.tc.compile:
            try:
                self.fwd = torch.compile(self.model)
            except Exception as e:  # graceful: compilation is an optimisation, not a requirement
                print(f"warning: torch.compile failed ({e}); training uncompiled", file=sys.stderr)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        B, T = self.tc.batch_size, self.preset.model.block_size
        self.train_batches = Batches(self.data_dir / "train.bin", self.meta["dtype"], T, B, self.device)
        self.val_batches = Batches(self.data_dir / "val.bin", self.meta["dtype"], T, B, self.device)
        # nats/token -> nats/char: a char tokenizer has ratio 1; BPE tokens cover several chars
        self.tpc = {s: self.meta.get(f"{s}_tokens", 1) / max(1, self.meta.get(f"{s}_chars") or
                                                              self.meta.get(f"{s}_tokens", 1))
                    for s in ("train", "val")}

    # -- autocast: bf16 matmuls with fp32 master weights
    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _state(self) -> dict:
        return {
            "step": self.step, "elapsed": self.elapsed, "tokens": self.tokens, "best_val": self.best_val,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "world": self.world,
        }

    def _load_state(self) -> None:
        wpath, spath, _ = ck.Run(self.run_dir).latest()
        ck.load_weights(self.model, wpath)
        st = ck.load_state(spath)
        try:
            for opt, sd in zip(self.optimizers, st["optimizers"], strict=True):
                opt.load_state_dict(sd)
            self.step, self.elapsed = int(st["step"]), float(st["elapsed"])
            self.tokens, self.best_val = int(st["tokens"]), float(st["best_val"])
            torch.set_rng_state(st["rng"]["torch"])
            random.setstate(st["rng"]["python"])
            np.random.set_state(st["rng"]["numpy"])
            if st["rng"].get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        except (KeyError, ValueError, TypeError) as e:
            raise ck.CheckpointError(f"{spath}: training state does not fit this run ({e})") from None
        if self.master:
            self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop log lines past the checkpoint we resume from (a killed run logs steps it never
        saved; a kill can also leave half a line), so a resumed log reads as one clean run."""
        p = self.run_dir / "metrics.jsonl"
        if not p.exists():
            return
        keep = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                if rec["step"] <= self.step:
                    keep.append(line)
                    if rec.get("eval") and rec["step"] == self.step:
                        self.evaluated_at = self.step  # fit() need not evaluate this step again
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        ck.Run(self.run_dir).write_metrics([json.loads(x) for x in keep])

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        out = {}
        for split, batches in (("train", self.train_batches), ("val", self.val_batches)):
            losses = []
            for k in range(self.tc.eval_iters):  # the same batches at every eval: comparable numbers
                x, y = batches.get(batch_seed(self.tc.seed + 7919, 0, k))
                with self._autocast():
                    _, loss = self.model(x, y, return_logits=not self.tc.fused_loss)
                losses.append(loss.item())
            nats = float(np.mean(losses)) * self.tpc[split]
            out[f"{split}_loss"] = nats
            out[f"{split}_bpc"] = nats / math.log(2)
        self.model.train()
        return out

    def _log(self, rec: dict) -> None:
        if not self.master:
            return
        ck.Run(self.run_dir).append_metrics(rec)
        if self.tracker is not None:
            self.tracker.log(rec)

    def _checkpoint(self) -> None:
        if self.master:
            ck.Run(self.run_dir).save_checkpoint(self.model, self._state(), self.step)

    def fit(self) -> dict:
        from .trackers import make_tracker

        tc, model = self.tc, self.model
        self.tracker = make_tracker(tc.log, self.run_dir, to_dict(self.preset)) if self.master else None
        model.train()
        tokens_per_step = tc.batch_size * self.preset.model.block_size * tc.grad_accum
        bar = None
        if self.master and tc.progress:
            from tqdm import tqdm
            bar = tqdm(total=tc.max_iters, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=None,
                       file=sys.stderr)
        t_last, tok_last, last_ev = time.perf_counter(), self.tokens, {}
        last_eval = getattr(self, "evaluated_at", None)  # set on resume when step's eval is logged
        start_elapsed, t0 = self.elapsed, time.perf_counter()
        loss_acc = torch.zeros((), device=self.device)
        n_acc = 0
        while True:
            self.elapsed = start_elapsed + (time.perf_counter() - t0)
            out_of_time = tc.max_time > 0 and self.elapsed >= tc.max_time
            done = self.step >= tc.max_iters or out_of_time
            if self.step % tc.eval_interval == 0 or done:
                if last_eval != self.step:
                    last_eval = self.step
                    ev = last_ev = self.evaluate()
                    self._log({"step": self.step, "eval": True, "time": round(self.elapsed, 3),
                               "tokens": self.tokens, **{k: round(v, 5) for k, v in ev.items()}})
                    if self.master and ev["val_loss"] < self.best_val:
                        self.best_val = ev["val_loss"]
                        ck.Run(self.run_dir).save_best(model, self.step, ev)
                    if bar is not None:
                        bar.write(f"step {self.step:>6}: train {ev['train_loss']:.4f}  val {ev['val_loss']:.4f} "
                                  f"nats/char ({ev['val_bpc']:.3f} bits/char)")
                    if tc.ckpt_interval == 0 or done:
                        self._checkpoint()
            if done:
                break
            progress = self.elapsed / tc.max_time if tc.max_time > 0 else None
            if progress is not None and tc.lr_decay_iters:
                progress = max(progress, (self.step - tc.warmup_iters) / max(1, tc.lr_decay_iters - tc.warmup_iters))
            lr = set_lr(self.optimizers, tc, lr_multiplier(self.step, tc, progress))
            for micro in range(tc.grad_accum):
                g = self.rank + micro * self.world  # this rank's slice of the global micro-batches
                x, y = self.train_batches.get(batch_seed(tc.seed, self.step, g))
                sync = self.world == 1 or micro == tc.grad_accum - 1
                ctx = contextlib.nullcontext() if sync else self.fwd.no_sync()
                with ctx, self._autocast():
                    _, loss = self.fwd(x, y, return_logits=not tc.fused_loss)
                (loss / tc.grad_accum).backward()
                loss_acc += loss.detach()
                n_acc += 1
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            for opt in self.optimizers:
                opt.step()
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens += tokens_per_step * self.world
            if self.step % tc.log_interval == 0:
                now = time.perf_counter()
                train_loss = (loss_acc / n_acc).item()  # the only host sync of a step, when logging
                loss_acc.zero_()
                n_acc = 0
                tps = (self.tokens - tok_last) / max(now - t_last, 1e-9)
                t_last, tok_last = now, self.tokens
                self._log({"step": self.step, "time": round(start_elapsed + now - t0, 3), "tokens": self.tokens,
                           "lr": lr, "train_loss": round(train_loss * self.tpc["train"], 5),
                           "tok_per_s": round(tps, 1)})
                if bar is not None:
                    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            # after the log line: a kill in between loses no logged step (resume drops later lines)
            if tc.ckpt_interval and self.step % tc.ckpt_interval == 0:
                self._checkpoint()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.tracker is not None:
            self.tracker.close()
        return {"step": self.step, "time": self.elapsed, "tokens": self.tokens, "best_val": self.best_val,
                **(last_ev if last_eval == self.step and last_ev else self.evaluate())}  # the final eval's numbers


def train(preset: Preset, data_dir, out_dir, *, resume: bool = False, force: bool = False,
          quiet: bool = False) -> dict:
    """Train `preset` on the prepared data in data_dir, writing the run to out_dir."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    rank = ddp_info()[0]
    meta = read_meta(data_dir)
    if preset.kind == "ngram":
        from .ngram import train_run
        return train_run(preset, data_dir, out_dir, force=force)
    if rank == 0 and resume:
        ck.Run.resume(out_dir)  # cleans a killed writer's temp files
    elif rank == 0:
        ck.Run.create(out_dir, force=force)
    preset.model.vocab_size = int(meta["vocab_size"])
    if rank == 0:
        if not quiet:
            print(f"tianci train: {preset.name} -> {out_dir}\n{format_config(preset)}", file=sys.stderr)
        if not resume:
            ck.Run(out_dir).begin("gpt", to_dict(preset), data_dir)
    if ddp_info()[2] > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() and preset.train.device != "cpu"
                                    else "gloo")
        dist.barrier()  # rank 0 has created the run dir
    trainer = Trainer(preset, data_dir, out_dir, resume=resume)
    try:
        result = trainer.fit()
    finally:
        if trainer.world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
    return result

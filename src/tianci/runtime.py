"""Compute set-up shared by every command that runs a model: `compute_init` picks the device and
dtype, sets threads, seeds and allocator tuning, and joins the DDP group when torchrun launched us
(nanochat's `common.compute_init` is the model). train, bench, sample, compose and serve call it
once at start; nothing else changes process-wide torch state. `StopSignals` is the trainer's
one other process-wide change: SIGTERM / SIGINT handlers while a run trains.

One backend rule for DDP: NCCL when the device is CUDA, gloo otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ParameterError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """Where and how this process computes. `owns_group`: compute_init created the DDP process
    group, so `close()` tears it down (a caller that made its own group keeps it)."""

    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    malloc_tuned: bool = False
    owns_group: bool = False
    dtype_why: str = ""  # with --dtype auto on a CPU: why this dtype (tianci.autodtype)

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Mixed precision for the forward pass: bf16/fp16 matmuls, fp32 master weights."""
        return autocast(self.device, self.dtype)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def ddp_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; world 1 when not under torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(spec: str = "auto") -> torch.device:
    """`auto` = cuda > mps > cpu. A CUDA device always carries an index (torch.cuda.set_device and
    DDP's device_ids refuse one without). A device this machine lacks is a ParameterError."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ParameterError("device", spec, "auto|cpu|cuda[:N]|mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible to this process")
            raise ParameterError("device", spec, "auto|cpu", why=why)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ParameterError("device", spec, f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not _mps_available():
        raise ParameterError("device", spec, "auto|cpu", why="MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError("device", spec, "auto|cpu|cuda[:N]|mps")
    return dev


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec in DTYPES:
        return DTYPES[spec]
    if spec != "auto":
        raise ParameterError("dtype", spec, "auto|" + "|".join(DTYPES))
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPU: fp32 unless compute_init is given the config to probe (tianci.autodtype). Measured: without
    # AVX512-BF16 (Zen3) a bf16 matmul runs ~70x slower than fp32; with it (Zen4) bf16 autocast gave
    # 1.0-1.2x, depending on the config, because bf16 softmax/attention run ~3x slower.
    return torch.float32


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


def compute_init(device: str = "auto", dtype: str = "auto", *, threads: int = 0, seed: int | None = None,
                 malloc: bool = True, ddp: bool = True, warn=None, preset=None) -> Compute:
    """Set up this process to compute: join DDP (under torchrun, when `ddp`), pick the device and
    dtype, set torch threads (0 = torch's choice), tune malloc on CPU, seed torch with seed + rank.
    `preset`: the config this process trains; with dtype auto on a CPU, tianci.autodtype picks bf16
    or fp32 for it (measured once per machine and config, cached) and `dtype_why` says why.
    `warn(msg)` receives advice (rank 0 only); default: print to stderr. Call `close()` at the end."""
    rank, local_rank, world = ddp_info() if ddp else (0, 0, 1)
    if world > 1 and device == "auto" and torch.cuda.is_available():
        device = f"cuda:{local_rank}"  # one GPU per process
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if threads > 0:
        torch.set_num_threads(threads)
    tuned = tune_malloc() if malloc and dev.type == "cpu" else False
    why = ""
    if dtype == "auto" and dev.type == "cpu" and preset is not None:  # after threads: the probe uses them
        if world > 1:
            why = "float32: under torchrun every rank must train in one dtype, and the probe is per process"
        else:
            from .autodtype import choose
            choice = choose(preset, has_bf16=cpu_has_bf16(), threads=torch.get_num_threads(),
                            torch_version=torch.__version__)
            dt, why = DTYPES[choice.dtype], choice.why
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    owns = False
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            owns = True
    if seed is not None:
        torch.manual_seed(seed + rank)
    if dev.type == "cpu" and dt == torch.bfloat16 and not cpu_has_bf16() and rank == 0:
        (warn or _stderr)("warning: dtype bfloat16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated "
                          "and much slower than float32")
    return Compute(dev, dt, rank, local_rank, world, tuned, owns, why)


class StopSignals:
    """While active, SIGTERM and SIGINT only set `signum`; the training loop finishes its step, saves
    and stops. The previous handlers come back on exit and after the first signal (so a second
    Ctrl-C is a hard stop). Handlers can only be set from the main thread; elsewhere this does nothing."""

    def __init__(self):
        self.signum = 0
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, budget_s: float = 20.0) -> dict:
    """Measured GFLOP/s of an n^3 matmul, the best of several timings (on a shared machine the
    best one is the closest to what the machine can do). If the dtype is emulated (bf16 on CPUs
    without AVX512-BF16 runs ~100x slower) a smaller size is timed instead, and `n` says which."""
    def timed(m: int, reps: int) -> float:
        a = torch.randn(m, m, device=device).to(dtype)
        b = torch.randn(m, m, device=device).to(dtype)
        a @ b
        sync(device)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t)
        return best

    probe = timed(min(n, 256), 3)
    if probe * (n / min(n, 256)) ** 3 > budget_s:  # the full size would take too long: measure smaller
        n = min(n, 256 if probe * 64 > budget_s else 512)
    s = timed(n, max(1, min(20, int(budget_s / max(probe * (n / min(n, 256)) ** 3, 1e-6)))))
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "gflops": 2 * n**3 / s / 1e9}

"""What `--dtype auto` trains in on a CPU: bf16 autocast where this CPU has bf16 matmuls
(AVX512-BF16 / AMX) *and* it is faster for this config, float32 everywhere else.

Why measured, not assumed: on a Zen 4 a bf16 matmul runs 2.6-2.9x fp32, yet bf16 autocast made
ci-cpu's step only 1.07x faster, and on short blocks the non-matmul work (softmax, norms, attention)
can make it slower. So the first time a config is trained on a machine, a probe times a few
optimizer steps of that very config (the trainer's own `train_step`) in fp32 and in bf16,
interleaved, best of each (a second or two), and the verdict is cached per machine, thread count,
torch version and config shape in the user's cache dir (tianci.sources.cache_dir), so later runs
pay nothing. bf16 must win by MARGIN: a tie stays in fp32 (exact, and within noise). The run
records the dtype chosen, so a resume trains in it whatever the cache says then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import DataError
from .files import atomic_write_json, read_json

MARGIN = 0.95  # bf16 is chosen when its step takes at most this fraction of the fp32 step
PROBE_BUDGET_S = 2.0  # about what the probe may take (both dtypes, warm-up included)
CACHE_NAME = "dtype-auto.json"
# "0": no probe, auto is float32 on every CPU (the test suite sets it: its results must not depend on
# which dtype a timing picked on the machine that runs it)
PROBE_ENV = "TIANCI_DTYPE_PROBE"
# bumped whenever the step's own code changes what each dtype costs (a cached verdict would be stale):
# 2 = the CPU's training attention runs in fp32 under bf16 autocast (tianci.attention._sdpa)
# 3 = fused AdamW on the CPU, loss chunks of 2^20 logits; 4 = the fused loss's bf16 softmax when training;
# 5 = its dW from the held gradient rows in one product (CPU)
STEP_REVISION = 5


@dataclass(frozen=True)
class ProbeResult:
    """Best time of one optimizer step in each dtype, on the batch size the probe ran."""

    fp32_ms: float
    bf16_ms: float
    batch_size: int


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # "float32" | "bfloat16"
    why: str  # one plain line: what was measured (or why nothing was), and where it is cached


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_key(preset, threads: int, torch_version: str) -> str:
    """What the verdict depends on: the machine, the threads, torch, the shape of the step (the
    model config, the micro-batch, the loss path, the optimizer) and the step's code revision."""
    tc = preset.train
    shape = {"machine": [platform.node(), cpu_name()], "threads": threads, "torch": torch_version,
             "model": dataclasses.asdict(preset.model), "batch_size": tc.batch_size,
             "fused_loss": tc.fused_loss, "fused_adamw": tc.fused_adamw, "optimizer": tc.optimizer, "compile": tc.compile,
             "step_revision": STEP_REVISION}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:24]


def cache_path() -> Path:
    from .sources import cache_dir

    return cache_dir() / CACHE_NAME


def decide(r: ProbeResult, where: str) -> DtypeChoice:
    """bf16 when its step is at least 1/MARGIN times faster, else float32; `where` says where the
    measurement comes from (probed now or cached)."""
    ratio = r.bf16_ms / max(r.fp32_ms, 1e-9)
    timing = (f"a step of this config took {r.bf16_ms:.1f} ms in bf16 vs {r.fp32_ms:.1f} ms in float32 "
              f"(batch {r.batch_size}; {where})")
    if ratio <= MARGIN:
        return DtypeChoice("bfloat16", f"{timing}: bf16 is {1 / ratio:.2f}x faster")
    return DtypeChoice("float32", f"{timing}: bf16 is not faster by {1 / MARGIN - 1:.0%} or more here")


def choose(preset, *, has_bf16: bool, threads: int, torch_version: str,
           probe: Callable[[object], ProbeResult] | None = None, cache: Path | None = None) -> DtypeChoice:
    """The dtype `--dtype auto` trains `preset` in on this CPU (see the module doc). `probe(preset)`
    times the step (default: probe_step); its result is cached in `cache` (default cache_path())."""
    if not has_bf16:
        return DtypeChoice("float32", "this CPU has no bf16 matmuls (AVX512-BF16/AMX): bf16 would be emulated")
    if os.environ.get(PROBE_ENV) == "0":
        return DtypeChoice("float32", f"the probe is off ({PROBE_ENV}=0)")
    path = cache or cache_path()
    key = probe_key(preset, threads, torch_version)
    try:
        entries = read_json(path, "dtype-auto cache") if path.is_file() else {}
    except DataError:
        entries = {}  # a damaged cache is measured again, and rewritten
    entries = entries if isinstance(entries, dict) else {}
    try:
        return decide(ProbeResult(**entries[key]), f"measured before, cached in {path}")
    except (KeyError, TypeError):
        pass
    result = (probe or probe_step)(preset)
    entries[key] = dataclasses.asdict(result)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, entries)
        where = f"measured now, cached in {path}"
    except (OSError, DataError) as e:  # a read-only cache costs a probe per run, nothing else
        where = f"measured now; not cached ({e})"
    return decide(result, where)


def probe_step(preset, budget_s: float = PROBE_BUDGET_S) -> ProbeResult:
    """Time optimizer steps of `preset` (random weights and tokens: speed does not depend on them)
    in fp32 and in bf16 autocast, interleaved, best of each. A config whose step is slow is probed
    on a smaller batch, so the probe stays within about budget_s. The caller's RNG is untouched."""
    import copy

    import torch

    from .model import GPT
    from .optim import build_optimizers
    from .runtime import autocast
    from .train import train_step

    cpu = torch.device("cpu")
    tc = copy.deepcopy(preset.train)
    tc.grad_accum = 1  # the step's cost per micro-batch is what differs between the dtypes
    cfg = preset.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(copy.deepcopy(cfg)).train()
        opts = build_optimizers(model, tc, "cpu")

        def batch(b: int):
            xy = torch.randint(0, cfg.vocab_size, (b, cfg.block_size + 1))
            return xy[:, :-1], xy[:, 1:]

        def timed(dtype, xy) -> float:
            t = time.perf_counter()
            train_step(model, opts, tc, 0, lambda micro: xy, amp=lambda: autocast(cpu, dtype))
            return time.perf_counter() - t

        def warm(xy) -> float:
            """Warm both dtypes up (a first call allocates and picks kernels); then what a step costs."""
            timed(torch.float32, xy)
            timed(torch.bfloat16, xy)
            return timed(torch.float32, xy)

        B = tc.batch_size
        xy = batch(B)
        cost = warm(xy)
        if cost > budget_s / 10:  # too slow to time several: a smaller batch (the ratio ~ the same)
            B = max(1, int(B * budget_s / 10 / cost))
            xy = batch(B)
            cost = warm(xy)
        n = max(2, min(6, int(budget_s / (2 * max(cost, 1e-6))) - 2))
        best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
        for _ in range(n):
            for dtype in best:
                best[dtype] = min(best[dtype], timed(dtype, xy))
    return ProbeResult(best[torch.float32] * 1e3, best[torch.bfloat16] * 1e3, B)

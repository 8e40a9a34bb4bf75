"""`tianci bench --speedrun`: the current record preset and the nanoGPT-style baseline trained side by
side, each by `tianci train` in its own process with its own threads (pinned to its own cores where
the machine has enough), to a target val loss or a time cap; the time each needed, and the ratio.

Each run stops itself at the first evaluation at or below the target (--target-loss: the schedule is
the preset's, unchanged). The cap is a SIGTERM from here -- not --max-time, which would bend the
learning-rate schedule to the clock -- and the trainer ends its step, saves and stops. Time to target
is the trainer's own clock at that evaluation (training, evaluations included; not start-up), with
the steps' own time (that clock less the evaluations and their checkpoints: a record that evaluates
every 100 steps pays ~16% of its clock for measuring) and the wall time since launch beside it (when
this process saw the evaluation's line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checkpoint import Run
from ..errors import RunError, TianciError

RECORD = "ci-cpu-speedrun"  # the current record (docs/speed.md, "speedrun")
BASELINE = "nanogpt-cpu"  # nanoGPT's shakespeare_char CPU config, its classic fp32 path
# the baseline's step budget and cosine length: the paired nanoGPT run of issue 16 trained 5,000 iterations
BASELINE_ITERS = 5000
TARGET = 4.30
CAP_S = 1200.0
POLL_S = 1.0  # how often the metrics files are looked at (the poller is a third process on the cores)


@dataclass
class Contender:
    """One side of the race: what it trains, where, on which cores; and what was seen of it."""

    role: str  # "record" | "baseline"
    preset: str
    run_dir: Path
    flags: list[str]
    cores: set[int] | None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    offset: int = 0  # bytes of metrics.jsonl already read
    wall_to_target: float | None = None
    stopped: str = ""  # "target" | "budget" | "cap" | "error"

    def launch(self, threads: int, log_dir: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cores = self.cores
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        log = open(log_dir / f"{self.role}.log", "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "tianci", "train", *self.flags], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
        log.close()  # the child holds its own descriptor

    def watch(self, target: float) -> None:
        """Read the new lines of metrics.jsonl; note when an eval first reaches the target."""
        p = self.run_dir / "metrics.jsonl"
        if self.wall_to_target is not None or not p.is_file():
            return
        with open(p, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        whole = chunk[:chunk.rfind(b"\n") + 1]  # a half-written last line waits for the next look
        self.offset += len(whole)
        for line in whole.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("eval") and rec.get("val_loss", float("inf")) <= target:
                self.wall_to_target = time.perf_counter() - self.started
                return


@dataclass
class Outcome:
    role: str
    preset: str
    reached: bool
    stopped: str  # "target" | "budget" (its max_iters / max_time) | "cap" | "error"
    train_s: float | None = None  # the trainer's clock at the first eval at or below the target
    step_s: float | None = None  # of that, the optimizer steps' time (evaluations and checkpoints left out)
    wall_s: float | None = None  # since launch, when that eval was seen
    step: int | None = None
    tokens: int | None = None
    val_at_target: float | None = None
    best_val: float | None = None
    last_train_s: float | None = None  # the trainer's clock at its last evaluation
    total_wall_s: float = 0.0
    cores: list[int] = field(default_factory=list)
    run_dir: str = ""
    error: str = ""


def _outcome(c: Contender, target: float, total_wall: float) -> Outcome:
    out = Outcome(c.role, c.preset, False, c.stopped, total_wall_s=total_wall, cores=sorted(c.cores or []),
                  run_dir=str(c.run_dir))
    try:
        _, evals = Run(c.run_dir).metrics()
    except (RunError, OSError):
        evals = []
    if evals:
        out.best_val = min(e["val_loss"] for e in evals)
        out.last_train_s = evals[-1].get("time")
    hit = next((e for e in evals if e["val_loss"] <= target), None)
    if hit is not None:
        out.reached, out.stopped = True, "target"
        out.train_s, out.wall_s = hit.get("time"), c.wall_to_target
        if out.train_s is not None and "eval_time" in hit:
            out.step_s = out.train_s - hit["eval_time"]
        out.step, out.tokens, out.val_at_target = hit["step"], hit.get("tokens"), hit["val_loss"]
    elif c.stopped == "error" or not evals:
        log = c.run_dir.parent / f"{c.role}.log"
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:] if log.is_file() else []
        out.stopped, out.error = c.stopped or "error", " | ".join(tail)
    return out


def _cores(threads: int) -> tuple[set[int] | None, set[int] | None]:
    """Disjoint cores for the two runs where there are enough, else no pinning (they share)."""
    try:
        have = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None
    if len(have) < 2 * threads:
        return None, None
    return set(have[:threads]), set(have[threads:2 * threads])


def speedrun(data, out, *, record: str = RECORD, baseline: str = BASELINE, target: float = TARGET,
             cap_s: float = CAP_S, threads: int = 1, baseline_iters: int = BASELINE_ITERS,
             poll_s: float = POLL_S, log=None) -> dict:
    """Race `record` against `baseline` (preset names or .toml paths) on the data in `data`, the runs
    written under `out` (record/, baseline/, and each one's log). Returns the outcome of each and the
    ratios (baseline / record) of training time and wall time to the target."""
    if target <= 0 or threads < 1 or cap_s <= 0:
        raise TianciError("--target and --cap must be > 0 and --threads >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--data", str(data), "--target-loss", repr(target), "--no-progress", "--force"]
    base_flags = ["--max-iters", str(baseline_iters), "--lr-decay-iters", str(baseline_iters)] if baseline_iters else []
    pins = _cores(threads)
    sides = [Contender("record", record, out / "record", ["--preset", record, "--out", str(out / "record"), *common],
                       pins[0]),
             Contender("baseline", baseline, out / "baseline",
                       ["--preset", baseline, "--out", str(out / "baseline"), *common, *base_flags], pins[1])]
    if log:
        where = "pinned to cores " + " and ".join(str(sorted(c.cores)) for c in sides) if pins[0] else "unpinned"
        log(f"speedrun: {record} vs {baseline} to val {target} nats/char, {threads} thread(s) each, {where}, "
            f"cap {cap_s:.0f} s")
    t0 = time.perf_counter()
    for c in sides:
        c.launch(threads, out)
    ends: dict[str, float] = {}
    try:
        while len(ends) < len(sides):
            time.sleep(poll_s)
            for c in sides:
                if c.role in ends:
                    continue
                c.watch(target)
                rc = c.proc.poll()
                if rc is not None:
                    ends[c.role] = time.perf_counter() - c.started
                    c.watch(target)
                    c.stopped = c.stopped or ("error" if rc not in (0, 128 + signal.SIGTERM) else "budget")
                    if log:
                        log(f"  {c.role} ({c.preset}) finished after {ends[c.role]:.0f} s wall")
                elif time.perf_counter() - c.started > cap_s and not c.stopped:
                    c.stopped = "cap"
                    c.proc.send_signal(signal.SIGTERM)  # it saves and stops at the end of its step
    finally:
        for c in sides:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
    res = {"target": target, "threads": threads, "cap_s": cap_s, "data": str(data), "wall_s": time.perf_counter() - t0,
           "runs": {c.role: asdict(_outcome(c, target, ends.get(c.role, 0.0))) for c in sides}}
    rec, base = res["runs"]["record"], res["runs"]["baseline"]
    for key in ("train_s", "step_s", "wall_s"):
        both = rec["reached"] and base["reached"] and rec[key] and base[key]
        res[f"ratio_{key}"] = base[key] / rec[key] if both else None
    if rec["reached"] and not base["reached"] and base["last_train_s"] and rec["train_s"]:
        res["ratio_train_s_at_least"] = base["last_train_s"] / rec["train_s"]  # the baseline needs more still
    return res


def format_speedrun(res: dict) -> str:
    from ..autodtype import cpu_name

    lines = [f"tianci bench --speedrun: to val {res['target']} nats/char, {res['threads']} thread(s) each, "
             f"cap {res['cap_s']:.0f} s, data {res['data']} ({cpu_name()})",
             f"  {'run':<9}{'preset':<16}{'reached':<9}{'train s':>9}{'step s':>9}{'wall s':>9}{'step':>8}{'tokens':>11}"
             f"{'best val':>10}  stopped"]
    for r in res["runs"].values():
        num = (lambda v, f: format(v, f) if v is not None else "-")
        lines.append(f"  {r['role']:<9}{Path(r['preset']).stem:<16}{'yes' if r['reached'] else 'no':<9}"
                     f"{num(r['train_s'], '.1f'):>9}{num(r.get('step_s'), '.1f'):>9}{num(r['wall_s'], '.0f'):>9}"
                     f"{num(r['step'], 'd'):>8}"
                     f"{num(r['tokens'], ','):>11}{num(r['best_val'], '.4f'):>10}  {r['stopped']}"
                     + (f" ({r['error']})" if r["error"] else ""))
    if res.get("ratio_train_s"):
        wall = f", {res['ratio_wall_s']:.2f}x wall" if res.get("ratio_wall_s") else ""
        steps = (f" ({res['ratio_step_s']:.2f}x the steps' own time, evaluations left out)"
                 if res.get("ratio_step_s") else "")
        lines.append(f"baseline / record: {res['ratio_train_s']:.2f}x the training time to the target{steps}{wall}")
    elif res.get("ratio_train_s_at_least"):
        lines.append(f"baseline / record: more than {res['ratio_train_s_at_least']:.2f}x (the baseline did not "
                     "reach the target)")
    elif res["runs"]["record"]["reached"]:
        lines.append("baseline / record: no ratio (a run reached the target at its first evaluation, untrained)")
    else:
        lines.append("baseline / record: no ratio (the record did not reach the target)")
    return "\n".join(lines)

"""The ladder: train every rung of the tutorial on the same data with the same budget, and compare.

Each rung is a preset (counting, bigram, +position, ... +dropout, +scale); each gets the same
wall-clock budget (and optionally the same token budget), the same seed and the same sampling
prompt. The results go to OUT/ladder.md (table), OUT/ladder.json and OUT/ladder.png (bar chart).

Resuming: every finished rung leaves OUT/rungs/<rung>.json, and a rerun with the same settings
skips it. A rung that was interrupted mid-training continues from its last checkpoint (the
trainer restores the step, the elapsed time and the RNGs, so the budget is not paid twice);
--force retrains everything.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import LN2
from ..config import Preset, load_preset, to_dict, validate
from ..errors import TianciError
from ..files import atomic_write, atomic_write_json, read_json
from ..sampling import CONTINUE_SAMPLING


RUNGS = ("counting", "bigram", "position", "attention", "multihead", "feedforward", "blocks",
         "residual", "projection", "layernorm", "dropout", "ci-cpu")
EVAL_TOKENS = 20 * 16 * 32  # tokens per evaluation, equal for every rung (eval_iters scales with B*T)


@dataclass
class LadderOptions:
    data: Path
    out: Path
    rungs: tuple[str, ...] = RUNGS
    budget_seconds: float | None = 60.0
    token_budget: int | None = None
    prompt: str = "春"
    seed: int = 1337
    temperature: float = CONTINUE_SAMPLING.temperature  # each rung's sample continues the prompt
    sample_chars: int = 40
    bpe_vocab: int | None = None
    device: str = "cpu"
    threads: int = 1  # torch CPU threads; 0 = torch's default (all cores)
    force: bool = False
    progress: bool = True


# ----------------------------------------------------------------------------- one rung

def rung_preset(name: str, opts: LadderOptions) -> Preset:
    """The rung's preset with the ladder's shared budget, seed and evaluation size."""
    preset = load_preset(name)
    preset.train.seed = preset.ngram.seed = opts.seed
    if preset.kind == "gpt":
        tc = preset.train
        tokens_per_step = tc.batch_size * tc.grad_accum * preset.model.block_size
        tc.max_time = float(opts.budget_seconds or 0.0)
        tc.max_iters = math.ceil(opts.token_budget / tokens_per_step) if opts.token_budget else 10**9
        tc.lr_decay_iters = 0  # with a time budget the cosine follows the clock, not the step
        # Evaluate the same number of tokens for every rung, a handful of times per budget.
        tc.eval_iters = max(2, round(EVAL_TOKENS / (tc.batch_size * preset.model.block_size)))
        # the trainer's own bar is off on a terminal (the ladder draws one bar); piped, its progress
        # lines are what keeps the ladder from being silent for its whole run
        tc.device, tc.progress, tc.log = opts.device, opts.progress and not sys.stderr.isatty(), "none"
    return validate(preset)


def _fingerprint(preset: Preset, data_dir: Path, opts: LadderOptions) -> dict:
    return {"preset": to_dict(preset), "data": str(Path(data_dir).resolve()), "budget": opts.budget_seconds,
            "token_budget": opts.token_budget, "prompt": opts.prompt, "temperature": opts.temperature,
            "sample_chars": opts.sample_chars}


def _sample_gpt(run_dir: Path, opts: LadderOptions) -> str:
    from ..checkpoint import load_run
    from ..generate import SampleOptions, complete

    run = load_run(run_dir, device="cpu", which="best")
    # 40 characters: a BPE token can hold several, so ask for enough tokens and cut by characters
    so = SampleOptions(max_new_tokens=opts.sample_chars, temperature=opts.temperature, seed=opts.seed)
    text = complete(run.model, run.tokenizer, opts.prompt, 1, so)[0].text
    return (opts.prompt + text)[:len(opts.prompt) + opts.sample_chars]


def _gpt_row(preset: Preset, run_dir: Path, result: dict) -> dict:
    from ..checkpoint import Run

    r = Run(run_dir)
    train, evals = r.metrics()
    tps = [r["tok_per_s"] for r in train if r.get("tok_per_s")]
    best = r.best()
    last = evals[-1] if evals else {}
    run = r.load(which="best")
    return {
        "params": run.model.num_params(non_embedding=False),
        "steps": result.get("step", last.get("step", 0)),
        "tokens": result.get("tokens", last.get("tokens", 0)),
        "time": result.get("time", last.get("time", 0.0)),
        # the best checkpoint is what we sample from, so report its losses (== last unless val rose)
        "train_loss": best.get("train_loss", last.get("train_loss")),
        "val_loss": best.get("val_loss", last.get("val_loss")),
        "best_step": best.get("step"),
        "tok_per_s": statistics.median(tps) if tps else result.get("tokens", 0) / max(result.get("time", 0), 1e-9),
    }


def _ngram_row(run_dir: Path, result: dict, meta: dict) -> dict:
    from ..ngram import NGram

    model = NGram.load(run_dir / "ngram.json")
    return {
        # the table's "parameters": the counts the model stores (a V x V table is mostly zeros)
        "params": sum(len(g) for g in model.grams),
        "steps": 0,
        "tokens": meta["train_tokens"],
        "time": result.get("time", 0.0),
        "train_loss": result["train_loss"],  # nats per character, as every run's metrics
        "val_loss": result["val_loss"],
        "best_step": None,
        "tok_per_s": meta["train_tokens"] / max(result.get("fit_time", 0.0), 1e-9),
    }


def run_rung(name: str, preset: Preset, data_dir: Path, opts: LadderOptions, label: str | None = None) -> dict:
    """Train one rung (or skip it if a finished result with the same settings exists)."""
    from ..corpus import read_meta
    from ..train import train

    label = label or name
    out = Path(opts.out)
    run_dir, res_path = out / "runs" / label, out / "rungs" / f"{label}.json"
    fp = _fingerprint(preset, data_dir, opts)
    if res_path.exists() and not opts.force:
        row = read_json(res_path, "ladder rung result")
        if row.get("fingerprint") == fp:
            row["skipped"] = True
            return row
    meta = read_meta(data_dir)
    if preset.kind == "ngram":
        result = train(preset, data_dir, run_dir, force=True, quiet=True)
        row = _ngram_row(run_dir, result, meta)
        from ..ngram import sample_run
        sample = sample_run(run_dir, opts.prompt, opts.sample_chars, opts.temperature, seed=opts.seed)[0]
    else:
        resumable = (not opts.force and (run_dir / "latest.json").exists() and (run_dir / "config.json").exists()
                     and _same_config(run_dir, preset))
        result = train(preset, data_dir, run_dir, resume=resumable, force=not resumable, quiet=True)
        row = _gpt_row(preset, run_dir, result)
        sample = _sample_gpt(run_dir, opts)
    adds = preset.rung or preset.description
    if meta.get("tokenizer") == "bpe":
        adds = f"BPE tokens (vocab {meta['vocab_size']:,}) instead of characters"
    row.update(rung=label, preset=name, adds=adds, kind=preset.kind,
               tokenizer=meta.get("tokenizer", "char"), vocab_size=meta["vocab_size"],
               tokens_per_char=meta["val_tokens"] / max(1, meta["val_chars"]), sample=sample,
               train_bpc=row["train_loss"] / LN2, val_bpc=row["val_loss"] / LN2, run_dir=str(run_dir),
               fingerprint=fp, skipped=False)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(res_path, row)  # written last: its presence means the rung is finished
    return row


def _same_config(run_dir: Path, preset: Preset) -> bool:
    from ..checkpoint import Run

    try:
        saved = Run(run_dir).config()["preset"]
    except TianciError:
        return False
    want = to_dict(preset)
    saved["model"]["vocab_size"] = want["model"]["vocab_size"] = 0
    return saved == want


# ----------------------------------------------------------------------------- BPE copy of the data

def bpe_data(data_dir: Path, vocab_size: int, out: Path) -> Path:
    """A BPE-tokenized copy of data_dir with the same poems in train and val (same split and seed)."""
    from ..corpus import Corpus, build, read_meta

    meta = read_meta(data_dir)
    dest = Path(out) / f"data-bpe{vocab_size}"
    if (dest / "meta.json").exists():
        m = read_meta(dest)
        if m.get("tokenizer") == "bpe" and m.get("vocab_size_requested", vocab_size) == vocab_size \
                and m.get("n_poems") == meta.get("n_poems"):
            return dest
    text_path = Path(data_dir) / "ci.txt"
    if not text_path.exists():
        raise TianciError(f"--bpe-vocab needs {text_path} (the corpus text written by `tianci prepare`)")
    text = text_path.read_text(encoding="utf-8")
    docs = text.split("\n\n")
    if docs and docs[-1] == "":
        docs.pop()
    if meta.get("n_poems") is not None and len(docs) != meta["n_poems"]:
        raise TianciError(f"{text_path}: {len(docs)} poems but meta.json says {meta['n_poems']}; "
                          "re-run `tianci prepare`")
    corpus = Corpus(docs=docs, source=str(text_path))
    build(corpus, dest, tokenizer="bpe", vocab_size=vocab_size, split=meta.get("split", "poem"),
          val_fraction=meta.get("val_fraction", 0.1), seed=meta.get("seed", 1337),
          extra_meta={"vocab_size_requested": vocab_size})
    return dest


# ----------------------------------------------------------------------------- the whole ladder

class _ClockBar:
    """One progress bar for the whole ladder, in budget-seconds, ticking from a helper thread
    (the trainer's own bar is off: one bar per rung would scroll the table away)."""

    def __init__(self, total_s: float, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=round(total_s), unit="s", desc="ladder", file=sys.stderr, disable=None,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} budget-s [{elapsed}]")
        self.done, self.cur_cap, self.cur_t0 = 0.0, 0.0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        if self.bar is not None:
            self._thread.start()

    def start(self, name: str, cap: float) -> None:
        self.cur_cap, self.cur_t0 = cap, time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(f"ladder [{name}]")

    def finish(self) -> None:
        self.done += self.cur_cap
        self.cur_t0 = None
        self._set(self.done)

    def _set(self, n: float) -> None:
        if self.bar is not None:
            self.bar.n = min(n, self.bar.total)
            self.bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            t0 = self.cur_t0
            if t0 is not None:
                self._set(self.done + min(self.cur_cap, time.perf_counter() - t0))

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()


def run_ladder(opts: LadderOptions) -> dict:
    """Train the rungs in order and write OUT/ladder.{md,json,png}. Returns the ladder.json dict."""
    data_dir, out = Path(opts.data), Path(opts.out)
    if opts.budget_seconds is None and not opts.token_budget:
        raise TianciError("give --budget-seconds or --token-budget (else the rungs would train forever)")
    if opts.budget_seconds is not None and opts.budget_seconds <= 0:
        raise TianciError(f"--budget-seconds={opts.budget_seconds} must be > 0")
    if opts.token_budget is not None and opts.token_budget <= 0:
        raise TianciError(f"--token-budget={opts.token_budget} must be > 0")
    if not opts.rungs:
        raise TianciError("--rungs: give at least one rung")
    from ..corpus import read_meta
    read_meta(data_dir)  # a clear error before anything trains
    import torch
    threads_before = torch.get_num_threads()
    if opts.threads:
        # One thread by default: the rungs are tiny (64-wide), so extra threads buy little, and on a
        # shared machine two spinning OpenMP threads per process made steps up to 7x slower.
        torch.set_num_threads(opts.threads)
    try:
        return _run_ladder(opts, data_dir, out)
    finally:
        torch.set_num_threads(threads_before)


def _run_ladder(opts: LadderOptions, data_dir: Path, out: Path) -> dict:
    from ..tokenizer import load_tokenizer

    try:  # fail before training, not after the first rung, when the prompt cannot be encoded
        load_tokenizer(data_dir / "tokenizer.json").encode(opts.prompt)
    except TianciError as e:
        raise TianciError(f"--prompt {opts.prompt!r}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    plan = [(name, rung_preset(name, opts), data_dir, name) for name in opts.rungs]
    if opts.bpe_vocab:
        gpts = [p for p in plan if p[1].kind == "gpt" and p[0] != "ci-gpu"] or [p for p in plan if p[1].kind == "gpt"]
        if not gpts:
            raise TianciError("--bpe-vocab needs at least one GPT rung in --rungs")
        name = gpts[-1][0]
        plan.append((name, rung_preset(name, opts), bpe_data(data_dir, opts.bpe_vocab, out),
                     f"{name}+bpe{opts.bpe_vocab}"))
    per_rung = opts.budget_seconds or 0.0
    bar = _ClockBar(per_rung * sum(p[1].kind == "gpt" for p in plan), opts.progress and per_rung > 0)
    rows = []
    try:
        for name, preset, ddir, label in plan:
            bar.start(label, per_rung if preset.kind == "gpt" else 0.0)
            rows.append(run_rung(name, preset, ddir, opts, label))
            bar.finish()
    finally:
        bar.close()
    prev, by_label = None, {}
    for r in rows:
        # the BPE rung compares with the same model on characters; every other rung with the one before
        base = by_label.get(r["preset"]) if r["tokenizer"] == "bpe" else None
        ref = base["val_loss"] if base is not None else prev
        r["delta_val"] = None if ref is None else r["val_loss"] - ref
        prev = r["val_loss"]
        by_label.setdefault(r["rung"], r)
    report = {"machine": machine(), "budget_seconds": opts.budget_seconds, "token_budget": opts.token_budget,
              "data": str(data_dir), "prompt": opts.prompt, "seed": opts.seed, "temperature": opts.temperature,
              "rungs": [{k: v for k, v in r.items() if k != "fingerprint"} for r in rows]}
    atomic_write_json(out / "ladder.json", report)
    atomic_write(out / "ladder.md", markdown(report))
    try:
        from .plot import plot_ladder, plot_runs
        plot_ladder(report["rungs"], out / "ladder.png")
        gpt_runs = [(r["run_dir"], r["rung"]) for r in report["rungs"] if r["kind"] == "gpt"]
        if gpt_runs:
            plot_runs([d for d, _ in gpt_runs], out / "curves.png", labels=[n for _, n in gpt_runs],
                      title="the ladder's GPT rungs: train (thin) and validation (thick) loss")
    except TianciError as e:  # no matplotlib: the table is still the result
        print(f"warning: {e}; skipped ladder.png", file=sys.stderr)
    return report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}, {platform.system()}"


def _fmt_int(n) -> str:
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def markdown(report: dict) -> str:
    """The table as Markdown (also what `tianci ladder` prints)."""
    budget = []
    if report.get("budget_seconds"):
        budget.append(f"{report['budget_seconds']:g} s per rung")
    if report.get("token_budget"):
        budget.append(f"at most {_fmt_int(report['token_budget'])} tokens per rung")
    lines = [
        "# tianci ladder", "",
        f"- machine: {report['machine']}",
        f"- budget: {', '.join(budget)}; data: `{report['data']}`; seed {report['seed']}",
        f"- samples: prompt `{report['prompt']}`, temperature {report['temperature']}, same seed for every rung",
        "- losses are per **character** (nats/char and bits/char), so char and BPE rungs compare", "",
        "| rung | adds | params | tokens seen | train nats/char (bits) | val nats/char (bits) | Δ val | tok/s "
        "| sample |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rungs"]:
        delta = "" if r.get("delta_val") is None else f"{r['delta_val']:+.3f}"
        sample = r["sample"].replace("\n", " / ").replace("|", "\\|")
        lines.append(f"| {r['rung']} | {r['adds']} | {_fmt_int(r['params'])} | {_fmt_int(r['tokens'])} "
                     f"| {r['train_loss']:.3f} ({r['train_bpc']:.2f}) | {r['val_loss']:.3f} ({r['val_bpc']:.2f}) "
                     f"| {delta} | {_fmt_int(r['tok_per_s'])} | {sample} |")
    return "\n".join(lines) + "\n"


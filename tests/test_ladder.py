"""The ladder runner (table, chart, resume) and BPE bits-per-character accounting, on a tiny
synthetic corpus so the tests are hermetic and take seconds."""

from __future__ import annotations

import json
import math
import random

import pytest

pytest.importorskip("torch")

from tianci.config import load_preset  # noqa: E402
from tianci.corpus import Corpus, build  # noqa: E402
from tianci.measure.ladder import LadderOptions, bpe_data, run_ladder  # noqa: E402

CHARS = "春花秋月何时了往事知多少小楼昨夜又东风故国不堪回首明中"
RUNGS = ("counting", "bigram", "attention", "residual")


def tiny_docs(n: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    line = lambda k: "".join(rng.choice(CHARS) for _ in range(k))  # noqa: E731
    return ["\n".join(["浣溪沙 李煜", *(f"{line(7)}，{line(5)}。" for _ in range(4))]) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    build(Corpus(docs=tiny_docs(), source="synthetic"), d, force=True)
    return d


@pytest.fixture(scope="module")
def ladder(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder")
    opts = LadderOptions(data=tiny_data, out=out, rungs=RUNGS, budget_seconds=1.0, progress=False)
    return opts, run_ladder(opts)


def test_ladder_writes_table_json_and_chart(ladder):
    """Guards: the ladder must train every rung, counting model first, and write ladder.md /
    ladder.json / ladder.png with one row per rung, finite per-char losses and Δ val."""
    opts, report = ladder
    rows = report["rungs"]
    assert [r["rung"] for r in rows] == list(RUNGS)
    assert rows[0]["kind"] == "ngram" and rows[0]["delta_val"] is None
    for prev, r in zip(rows, rows[1:]):
        assert math.isclose(r["delta_val"], r["val_loss"] - prev["val_loss"])
    for r in rows:
        assert math.isfinite(r["val_loss"]) and r["val_loss"] > 0
        assert math.isclose(r["val_bpc"], r["val_loss"] / math.log(2))
        assert r["params"] > 0 and r["tokens"] > 0 and r["tok_per_s"] > 0
        assert r["sample"].startswith("春") and 1 < len(r["sample"]) <= 41
    md = (opts.out / "ladder.md").read_text(encoding="utf-8")
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(RUNGS)  # header + rows
    assert "+self-attention" in md
    saved = json.loads((opts.out / "ladder.json").read_text(encoding="utf-8"))
    assert [r["rung"] for r in saved["rungs"]] == list(RUNGS)
    for png in ("ladder.png", "curves.png"):
        assert (opts.out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ladder_resume_skips_finished_and_resumes_unfinished(ladder):
    """Guards: an interrupted ladder must not retrain finished rungs, and a rung cut off mid-run
    must continue from its checkpoint (keeping its metrics) rather than start from zero."""
    opts, first = ladder
    again = run_ladder(opts)
    assert all(r["skipped"] for r in again["rungs"])
    assert [r["val_loss"] for r in again["rungs"]] == [r["val_loss"] for r in first["rungs"]]
    # Interrupt "attention": its result file is gone but its run dir has a checkpoint.
    (opts.out / "rungs" / "attention.json").unlink()
    lines_before = (opts.out / "runs" / "attention" / "metrics.jsonl").read_text().splitlines()
    third = run_ladder(opts)
    by = {r["rung"]: r for r in third["rungs"]}
    assert not by["attention"]["skipped"] and all(by[n]["skipped"] for n in RUNGS if n != "attention")
    lines_after = (opts.out / "runs" / "attention" / "metrics.jsonl").read_text().splitlines()
    assert lines_after[:len(lines_before)] == lines_before  # resumed, not restarted
    assert by["attention"]["steps"] >= next(r for r in first["rungs"] if r["rung"] == "attention")["steps"]


def test_ladder_rejects_bad_budget(tiny_data, tmp_path):
    """Guards: a zero budget must be a clear user error, not a rung that trains forever."""
    from tianci.errors import TianciError

    with pytest.raises(TianciError, match="budget"):
        run_ladder(LadderOptions(data=tiny_data, out=tmp_path, budget_seconds=0, progress=False))


# ----------------------------------------------------------------------------- BPE

@pytest.fixture(scope="module")
def bpe_dir(tiny_data, tmp_path_factory):
    return bpe_data(tiny_data, 600, tmp_path_factory.mktemp("bpe"))


def test_bpe_copy_round_trips_and_keeps_the_split(tiny_data, bpe_dir):
    """Guards: the BPE copy must hold the same poems in train/val as the char data, encode
    fewer tokens than characters, and decode back to the exact text (streamed too)."""
    from tianci.tokenizer import StreamDecoder, load_tokenizer

    char_meta = json.loads((tiny_data / "meta.json").read_text())
    meta = json.loads((bpe_dir / "meta.json").read_text())
    assert meta["tokenizer"] == "bpe"
    assert (meta["train_chars"], meta["val_chars"]) == (char_meta["train_chars"], char_meta["val_chars"])
    assert meta["val_tokens"] < meta["val_chars"] and meta["train_tokens"] < meta["train_chars"]
    tok = load_tokenizer(bpe_dir / "tokenizer.json")
    text = (tiny_data / "ci.txt").read_text(encoding="utf-8")[:2000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    dec = StreamDecoder(tok)
    assert "".join(dec.push(i) for i in ids) + dec.flush() == text


def test_bpe_losses_are_reported_per_character(bpe_dir, tmp_path):
    """Guards: a BPE run's val loss must be per-token loss x tokens/char, or char and BPE runs
    (and the ladder's BPE rung) would not compare; and the per-token loss must stand beside it
    (evaluation reported only nats/char, so a BPE run's own per-token loss was lost)."""
    from tianci.train import Trainer

    preset = load_preset("bigram")
    preset.train.eval_iters, preset.train.device, preset.train.progress = 2, "cpu", False
    preset.model.block_size = 16
    ev = Trainer(preset, bpe_dir, tmp_path).evaluate()
    meta = json.loads((bpe_dir / "meta.json").read_text())
    for split in ("train", "val"):
        ratio = meta[f"{split}_tokens"] / meta[f"{split}_chars"]
        assert ratio < 1
        assert math.isclose(ev[f"{split}_loss"], ev[f"{split}_loss_per_token"] * ratio, rel_tol=1e-6)
        assert math.isclose(ev[f"{split}_bpc"], ev[f"{split}_loss"] / math.log(2), rel_tol=1e-9)


def test_bpe_run_metrics_carry_nats_per_token(bpe_dir, tmp_path):
    """Guards a BPE run's metrics.jsonl and best.json without nats per token: every eval line (and
    every train line) of a tiny BPE run must hold the per-token loss beside the per-char one, and a
    char run's lines must not (there they are the same number)."""
    from tianci.checkpoint import Run, loss_fields
    from tianci.train import train

    preset = load_preset("bigram")
    preset.model.block_size, preset.train.batch_size, preset.train.log_interval = 16, 4, 1
    preset.train.max_iters, preset.train.eval_iters, preset.train.eval_interval = 2, 1, 1
    preset.train.device, preset.train.progress = "cpu", False
    train(preset, bpe_dir, tmp_path / "run", quiet=True)
    run = Run(tmp_path / "run")
    tr, evals = run.metrics()
    assert len(evals) == 3 and len(tr) == 2
    for rec in evals:
        assert rec["val_loss"] < rec["val_loss_per_token"] and "train_loss_per_token" in rec
    assert all(rec["train_loss"] < rec["train_loss_per_token"] for rec in tr)
    assert "val_loss_per_token" in run.best()
    char = loss_fields("val", 2.0, {"val_tokens": 10, "val_chars": 10})
    assert char == {"val_loss": 2.0, "val_bpc": 2.0 / math.log(2)}


def test_gpt_trains_and_samples_on_bpe_data(bpe_dir, tmp_path):
    """Guards: train and sample must work end to end with a BPE data directory."""
    from tianci.checkpoint import load_run
    from tianci.generate import SampleOptions, complete
    from tianci.train import train

    preset = load_preset("residual")
    preset.model.block_size, preset.train.batch_size = 16, 4
    preset.train.max_iters, preset.train.eval_iters, preset.train.eval_interval = 3, 2, 3
    preset.train.device, preset.train.progress = "cpu", False
    res = train(preset, bpe_dir, tmp_path / "run", quiet=True)
    assert res["step"] == 3 and math.isfinite(res["best_val"])
    run = load_run(tmp_path / "run")
    assert run.tokenizer.kind == "bpe"
    out = complete(run.model, run.tokenizer, "春", 1, SampleOptions(max_new_tokens=10, seed=1))[0]
    assert out.completion_tokens == 10 and isinstance(out.text, str)

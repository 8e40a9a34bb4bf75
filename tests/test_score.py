"""`tianci eval`: a run's exact loss on a whole split (tianci.measure.score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tianci.checkpoint import load_run
from tianci.cli import main
from tianci.errors import DataError
from tianci.measure.score import score_split


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A 30-step RoPE / RMSNorm run on the tiny corpus (read only)."""
    run = tmp_path_factory.mktemp("score") / "run"
    assert main(["train", "--preset", "ci-cpu-speedrun", "--data", str(tiny_data), "--block-size", "16",
                 "--n-embd", "16", "--n-layer", "1", "--n-head", "2", "--batch-size", "4", "--max-iters", "30",
                 "--lr-decay-iters", "30", "--warmup-iters", "3", "--eval-iters", "1", "--eval-interval", "1000",
                 "--no-progress", "--device", "cpu", "--out", str(run)]) == 0
    return run


def test_eval_scores_every_window_once(trained, tiny_data):
    """Guards: windows that overlap, skip tokens or read one past the split (the strided view), a mean
    weighted wrongly over a short last batch, and a fused-loss result that differs from the plain
    cross-entropy over the full logits."""
    r = load_run(trained)
    T = r.model.config.block_size
    val = np.fromfile(tiny_data / "val.bin", dtype=np.uint16).astype(np.int64)
    n = (len(val) - 1) // T
    assert n >= 3  # several windows, and a last batch shorter than the others below
    with torch.no_grad():  # the reference: every window on its own, full logits, F.cross_entropy
        losses = []
        for i in range(n):
            x = torch.from_numpy(val[i * T:i * T + T])[None]
            y = torch.from_numpy(val[i * T + 1:i * T + T + 1])[None]
            logits, _ = r.model(x)
            losses.append(F.cross_entropy(logits[0].float(), y[0], reduction="sum").item())
    want = sum(losses) / (n * T)
    for bs in (1, n - 1, 64):  # n - 1: a last batch of one window
        s = score_split(r, "val", batch_size=bs)
        assert (s.windows, s.tokens) == (n, n * T)
        assert s.nats_per_token == pytest.approx(want, rel=1e-5), bs
        assert s.fields["val_loss"] == pytest.approx(want, rel=1e-5)  # char data: a token is a character
        assert s.fields["val_bpc"] == pytest.approx(want / np.log(2), rel=1e-5)


def test_eval_command_prints_the_whole_split_loss(trained, capsys):
    """Guards: the command printing another number than the library computes, or the train split
    being scored when val is asked for."""
    capsys.readouterr()
    assert main(["eval", "--run", str(trained), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    r = load_run(trained)
    val, train = score_split(r, "val"), score_split(r, "train")
    assert f"val {val.fields['val_loss']:.4f} nats/char" in out and f"{val.windows:,} windows of 16" in out
    assert main(["eval", "--run", str(trained), "--split", "train"]) == 0
    assert f"train {train.fields['train_loss']:.4f} nats/char" in capsys.readouterr().out
    assert train.windows > val.windows


def test_eval_refuses_data_of_another_tokenizer(trained, tmp_path, capsys):
    """Guards: scoring a split tokenized by another tokenizer (token ids that mean other characters:
    a number with no error), and a bad --batch-size reaching the model."""
    text = tmp_path / "other.txt"
    text.write_text("天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。\n\n" * 40, encoding="utf-8")
    other = tmp_path / "other"
    assert main(["prepare", "--text", str(text), "--out", str(other)]) == 0
    with pytest.raises(DataError, match="another tokenizer"):
        score_split(load_run(trained), "val", data=other)
    capsys.readouterr()
    assert main(["eval", "--run", str(trained), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another tokenizer" in err[0]
    assert main(["eval", "--run", str(trained), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "tianci eval: error: batch-size=0 is not allowed: expected 1..4096"

"""The trainer (tianci.train via `tianci train`): exact resume, SIGKILL safety, the run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tianci.checkpoint import latest_paths, load_run
from tianci.cli import main


REPO = Path(__file__).resolve().parents[1]


def tiny_flags(data: Path, *extra: str) -> list[str]:
    """A model small enough to train a few steps in well under a second, evaluated rarely."""
    return ["--preset", "dropout", "--data", str(data), "--block-size", "32", "--n-embd", "32", "--n-layer", "2",
            "--n-head", "4", "--attn-impl", "sdpa", "--batch-size", "4", "--eval-iters", "2",
            "--eval-interval", "1000", "--log-interval", "1", "--warmup-iters", "2", "--no-progress",
            "--device", "cpu", *extra]


def weights_at(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_paths(run)[0]))


@pytest.mark.parametrize("extra", [[], ["--dropout", "0.2", "--grad-accum", "2"]])
def test_resume_is_bitwise_exact(tiny_data, tmp_path, extra, capsys):
    """Guards: a resume that is merely close (RNG state, optimizer moments, schedule position or
    data position not restored): N+M steps in one go and N steps + --resume to N+M must give
    bitwise-equal weights, with dropout and gradient accumulation too."""
    n, m = 3, 3
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *tiny_flags(tiny_data, *extra), "--out", str(one), "--max-iters", str(n + m),
                 "--lr-decay-iters", str(n + m)]) == 0
    assert main(["train", *tiny_flags(tiny_data, *extra), "--out", str(two), "--max-iters", str(n),
                 "--lr-decay-iters", str(n + m)]) == 0
    assert latest_paths(two)[2] == n
    assert main(["train", "--resume", str(two), "--max-iters", str(n + m)]) == 0
    capsys.readouterr()
    a, b = weights_at(one), weights_at(two)
    assert latest_paths(two)[2] == n + m and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log continues: one train line per step, steps 1..n+m, none repeated
    recs = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if not r.get("eval")] == list(range(1, n + m + 1))
    assert [r["step"] for r in recs if r.get("eval")] == [0, n, n + m]  # step n is not evaluated twice


def test_run_dir_holds_resolved_config_and_metrics(tiny_data, tmp_path, capsys):
    """Guards: config.json saving the preset rather than the flags actually used (a resumed or
    sampled run would rebuild another model), and metrics lines missing their documented fields."""
    run = tmp_path / "run"
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "2", "--n-layer", "1",
                 "--learning-rate", "0.005"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 2 and result["val_loss"] > 0
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    meta = json.loads((tiny_data / "meta.json").read_text(encoding="utf-8"))
    assert cfg["kind"] == "gpt" and cfg["preset"]["name"] == "dropout"
    assert cfg["preset"]["model"]["n_layer"] == 1 and cfg["preset"]["train"]["learning_rate"] == 0.005
    assert cfg["preset"]["model"]["vocab_size"] == meta["vocab_size"]
    assert (run / "tokenizer.json").read_bytes() == (tiny_data / "tokenizer.json").read_bytes()
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if not r.get("eval")]
    evals = [r for r in recs if r.get("eval")]
    assert {"step", "time", "tokens", "lr", "train_loss", "tok_per_s"} <= set(train_recs[0])
    assert {"step", "time", "tokens", "train_loss", "train_bpc", "val_loss", "val_bpc"} <= set(evals[-1])
    assert [e["step"] for e in evals] == [0, 2]
    assert abs(evals[-1]["val_bpc"] - evals[-1]["val_loss"] / 0.6931471805599453) < 1e-3
    assert (run / "best.safetensors").exists() and load_run(run).model.config.n_layer == 1


def test_sigkill_leaves_a_loadable_checkpoint(tiny_data, tmp_path, capsys):
    """Guards: a checkpoint written in place (a kill mid-write leaves a half file that latest.json
    points at): kill -9 a training process that checkpoints every step, then the latest checkpoint
    must load and the run must resume and finish."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "tianci", "train", *tiny_flags(tiny_data), "--out", str(run),
                             "--max-iters", "1000000", "--ckpt-interval", "1", "--eval-interval", "1000000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            latest = run / "latest.json"
            if latest.exists() and json.loads(latest.read_text() or "{}").get("step", 0) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the trainer exited early"
        time.sleep(0.13)  # land somewhere inside a later checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _, _, step = latest_paths(run)
    assert step >= 3
    r = load_run(run, which="latest")
    assert r.model.config.n_layer == 2
    assert main(["train", "--resume", str(run), "--max-iters", str(step + 2)]) == 0
    capsys.readouterr()
    assert latest_paths(run)[2] == step + 2
    load_run(run, which="latest")
    # the log reads as one run: steps the killed process logged but never saved are dropped
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if not r.get("eval")]
    assert steps == list(range(1, step + 3))


def test_resume_refuses_model_changes(tiny_data, tmp_path, capsys):
    """Guards: --resume with a different architecture flag building a model the checkpoint does not fit."""
    run = tmp_path / "run"
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--n-layer", "3"]) == 2
    err = capsys.readouterr().err
    assert "--n-layer" in err and err.count("\n") == 1

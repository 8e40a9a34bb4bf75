"""The `tianci` command end to end on the tiny corpus: prepare -> train -> sample, and bad input
that must exit 2 with one line (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tianci.cli import main


REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
TRAIN = ["--preset", "layernorm", "--block-size", "16", "--n-embd", "16", "--n-layer", "1", "--n-head", "2",
         "--batch-size", "4", "--eval-iters", "1", "--eval-interval", "1000", "--no-progress", "--device", "cpu"]


def tianci(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tianci", *args], env=ENV, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(tiny_poetry_dir, tmp_path_factory) -> tuple[Path, Path]:
    """prepare + train through real subprocesses (exactly what a user types); returns (data, run)."""
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "data", root / "run"
    p = tianci("prepare", "--source", str(tiny_poetry_dir), "--out", str(data), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "poems 200" in p.stdout
    p = tianci("train", *TRAIN, "--data", str(data), "--out", str(run), "--max-iters", "3")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["step"] == 3
    return data, run


def test_prepare_train_sample_end_to_end(cli_run):
    """Guards: the three commands not fitting together (a run that `sample` cannot load, options
    that are parsed but not passed on, a sample that crashes after training)."""
    data, run = cli_run
    p = tianci("sample", "--run", str(run), "--prompt", "春花", "--stop-at-end", "--num-samples", "2", "--no-cache",
               "--seed", "1", "--max-new-tokens", "25", "--top-k", "20", "--top-p", "0.95")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.count("--- sample ") == 2 and "--- sample 2\n春花" in out
    for sample in out.split("--- sample ")[1:]:
        body = sample.split("\n", 1)[1].rstrip("\n")
        assert body.startswith("春花") and "\n\n" not in body  # stop-at-end never prints the blank line
        assert len(body) <= len("春花") + 25


def test_sample_cache_and_seed_in_process(cli_run, capsys):
    """Guards: --seed not making sampling reproducible, and --no-cache sampling other poems than
    the KV-cache path for the same seed."""
    _, run = cli_run
    outs = []
    for extra in ([], [], ["--no-cache"]):
        assert main(["sample", "--run", str(run), "--prompt", "春", "--seed", "3", "--max-new-tokens", "40",
                     "--num-samples", "2", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2]
    assert len(outs[0]) > 40
    assert main(["sample", "--run", str(run), "--which", "latest", "--prompt", "", "--seed", "3",
                 "--temperature", "0", "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize("case", ["temperature", "top_p", "unknown_char", "missing_run", "num_samples"])
def test_bad_sample_input_exits_2_with_one_line(cli_run, tmp_path, capsys, case):
    """Guards: bad user input ending in a Python traceback (or exit 1), or an error that does not
    say what was wrong."""
    _, run = cli_run
    args = {"temperature": ["--run", str(run), "--temperature", "-1"],
            "top_p": ["--run", str(run), "--top-p", "1.5"],
            "unknown_char": ["--run", str(run), "--prompt", "春x"],
            "missing_run": ["--run", str(tmp_path / "no-such-run")],
            "num_samples": ["--run", str(run), "--num-samples", "0"]}[case]
    word = {"temperature": "temperature", "top_p": "top_p", "unknown_char": "'x'", "missing_run": "no-such-run",
            "num_samples": "num-samples"}[case]
    assert main(["sample", *args]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""  # nothing printed before the error
    assert cap.err.count("\n") == 1 and cap.err.startswith("tianci sample: error:") and word in cap.err


def test_bad_train_input_exits_2(tmp_path, capsys, tiny_data):
    """Guards: a missing data directory or an unknown preset producing a traceback, or creating
    the run directory before failing."""
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--data", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-data" in err and "prepare" in err
    assert not out.exists()
    assert main(["train", "--preset", "nope", "--data", str(tiny_data), "--out", str(out)]) == 2
    assert "bigram" in capsys.readouterr().err
    assert main(["train", *TRAIN, "--data", str(tiny_data), "--out", str(out), "--dropout", "2"]) == 2
    assert "dropout" in capsys.readouterr().err
    assert main(["train", *TRAIN, "--data", str(tiny_data)]) == 2  # neither --out nor --resume
    assert "--out" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "gone")]) == 2
    assert "gone" in capsys.readouterr().err


def test_subprocess_errors_have_no_traceback(tmp_path):
    """Guards: the console entry point (python -m tianci) not turning TianciError into exit 2 + one line."""
    p = tianci("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    p = tianci("prepare", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "d"), "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "missing" in p.stderr
    p = tianci()
    assert p.returncode == 0 and "sample" in p.stdout  # bare `tianci` shows the command list


def test_counting_model_train_and_sample(tiny_data, tmp_path, capsys):
    """Guards: `sample` on a counting-model run printing the prompt twice (sample_run's texts
    already start with it), or the counting preset not training through `tianci train`."""
    from tianci.ngram import sample_run

    run = tmp_path / "count"
    assert main(["train", "--preset", "counting", "--data", str(tiny_data), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--prompt", "春花", "--seed", "4", "--max-new-tokens", "20",
                 "--temperature", "1.0"]) == 0
    [expected] = sample_run(run, "春花", 20, 1.0, 4, 1)
    assert capsys.readouterr().out == f"--- sample 1\n{expected}\n" and expected.startswith("春花")


def test_int8_sampling_and_bench_on_a_trained_run(cli_run, capsys):
    """Guards `--quantize int8` being parsed but not applied, and `tianci bench --run` not finding the
    run's val.bin or misreporting what int8 weights cost."""
    from tianci.measure.bench import quant_quality

    _, run = cli_run
    assert main(["sample", "--run", str(run), "--quantize", "int8", "--prompt", "春", "--seed", "3",
                 "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("--- sample 1\n春")
    q = quant_quality(run, "cpu", tokens=256)
    assert q["tokens"] == 256 and abs(q["val_loss_int8"] - q["val_loss_fp32"]) < 0.05
    assert 0.5 < q["greedy_agreement"] <= 1.0
    assert main(["bench", "--run", str(run), "--steps", "0", "--decode-tokens", "3", "--peak-size", "128",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "KV cache int8" in out and "trained weights" in out and "greedy next token agrees" in out

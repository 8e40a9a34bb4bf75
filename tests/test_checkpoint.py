"""Checkpoints and run directories (tianci.checkpoint): bad files are named, nothing is lost by accident."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tianci.checkpoint import CheckpointError, latest_paths, load_run, save_weights
from tianci.cli import main
from tianci.config import GPTConfig
from tianci.model import GPT



def tiny_flags(data: Path, *extra: str) -> list[str]:
    return ["--preset", "layernorm", "--data", str(data), "--block-size", "16", "--n-embd", "16", "--n-layer", "1",
            "--n-head", "2", "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "1000", "--no-progress",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-step run (read only: copy it before damaging anything)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "2"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def test_run_dir_layout(trained):
    """Guards: a run directory missing a file that sampling or resuming needs."""
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "latest.json", "best.safetensors", "best.json"):
        assert (trained / name).is_file(), name
    w, s, step = latest_paths(trained)
    assert w.is_file() and s.is_file() and step == 2
    assert not [p for p in trained.rglob("*.tmp")]  # no temp files left behind
    assert load_run(trained).model.training is False


@pytest.mark.parametrize("which", ["best", "latest"])
def test_truncated_weights_name_the_file(run, which):
    """Guards: a truncated .safetensors surfacing as a raw safetensors/torch exception (or, worse,
    loading garbage) instead of a CheckpointError that names the file."""
    path = run / "best.safetensors" if which == "best" else latest_paths(run)[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=path.name):
        load_run(run, which=which)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=path.name):
        load_run(run, which=which)


def test_foreign_weights_name_the_file(run):
    """Guards: weights from another config loading with strict=False into the wrong model (or a
    bare size-mismatch RuntimeError)."""
    other = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_weights(other, run / "best.safetensors")
    with pytest.raises(CheckpointError, match="best.safetensors") as e:
        load_run(run)
    assert "config" in str(e.value)


def test_garbage_training_state_names_the_file(run, capsys):
    """Guards: `--resume` on a corrupt state-*.pt dying in pickle with a traceback."""
    spath = latest_paths(run)[1]
    spath.write_bytes(b"this is not a torch checkpoint")
    assert main(["train", "--resume", str(run), "--max-iters", "3"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (the trainer prints its config to stderr first)
    assert last.startswith("tianci train: error:") and spath.name in last and "Traceback" not in err
    spath.write_bytes(b"")
    assert main(["train", "--resume", str(run), "--max-iters", "3"]) == 2
    assert spath.name in capsys.readouterr().err


def test_foreign_training_state_names_the_file(run, capsys):
    """Guards: a well-formed torch file that is not a tianci state (KeyError deep in the trainer)."""
    spath = latest_paths(run)[1]
    torch.save({"hello": 1}, spath)
    assert main(["train", "--resume", str(run), "--max-iters", "3"]) == 2
    assert spath.name in capsys.readouterr().err


def test_bad_latest_pointer(run):
    """Guards: a corrupt latest.json raising JSONDecodeError instead of naming the file."""
    (run / "latest.json").write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match="latest.json"):
        load_run(run, which="latest")
    (run / "latest.json").unlink()
    with pytest.raises(CheckpointError, match="latest.json"):
        latest_paths(run)


def test_missing_run_dir_and_tokenizer(run, tmp_path):
    """Guards: sampling from a missing run (or one without tokenizer.json) failing with FileNotFoundError."""
    with pytest.raises(CheckpointError, match="config.json"):
        load_run(tmp_path / "nope")
    (run / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_run(run)


def test_existing_run_is_not_overwritten(run, tiny_data, capsys):
    """Guards: `train --out` silently clobbering a trained run: it must refuse and point at
    --resume and --force; --force must then really start over."""
    before = (run / "best.safetensors").read_bytes()
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--force" in err and "Traceback" not in err
    assert (run / "best.safetensors").read_bytes() == before
    (run / "my-notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "1", "--force"]) == 0
    capsys.readouterr()
    assert latest_paths(run)[2] == 1
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 1  # the old run's log is gone, not appended to
    assert sorted(p.name for p in (run / "ckpt").iterdir() if p.name.startswith("model-")) == ["model-0000001.safetensors"]
    assert (run / "my-notes.txt").read_text(encoding="utf-8") == "keep me"  # not ours: never deleted


def test_unrelated_directory_is_never_deleted(tmp_path, tiny_data, capsys):
    """Guards: `train --out DIR --force` wiping a directory that is not a tianci run (a user's home, a data dir)."""
    d = tmp_path / "important"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work", encoding="utf-8")
    (d / "ckpt").mkdir()  # even with a file named like ours
    (d / "ckpt" / "x").write_text("x")
    for extra in ([], ["--force"]):
        assert main(["train", *tiny_flags(tiny_data), "--out", str(d), "--max-iters", "1", *extra]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert (d / "thesis.tex").read_text(encoding="utf-8") == "years of work" and (d / "ckpt" / "x").exists()
    assert sorted(p.name for p in d.iterdir()) == ["ckpt", "thesis.tex"]

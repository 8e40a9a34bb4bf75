"""benchmarks/gpu_ci.sh, smoke-tested on the CPU with a tiny preset: a GPU lease gives the script one
try, so a broken step must show here, not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tianci.cli import main

from conftest import write_tiny_poetry_tree
from test_classical import write_poetry

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_ci.sh"
TINY = """description = "a tiny stand-in for ci-gpu"
[model]
block_size = 64
n_embd = 32
n_head = 2
n_layer = 1
dropout = 0.1
norm = "layernorm"
attn_impl = "sdpa"
[train]
batch_size = 4
max_iters = 100
learning_rate = 0.003
warmup_iters = 1
eval_iters = 1
dtype = "float32"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from server_fixtures import build_world

    return build_world(tmp_path_factory.mktemp("gpu-script-world"))


def test_gpu_script_runs_every_part_and_returns_the_archive(world, rhyme_dir, tmp_path):
    """Guards the lease's one try failing on the script itself: ci-only training, classical pretraining
    then `--init-from` fine-tuning at equal steps for both splits, and compose-eval of each model must all
    finish, the fine-tunes must start from their pretraining runs, and the archive must hold the metrics,
    configs and reports of every part; run as parts 2-3 alone (a later lease), part 2 trains the ci-only arm."""
    pytest.importorskip("sklearn")
    root = tmp_path / "root"
    root.mkdir()
    (root / "ci").symlink_to(world["data"])
    (root / "cipu").symlink_to(world["cipu_dir"])
    (root / "rhyme").symlink_to(rhyme_dir)
    poetry = write_poetry(tmp_path / "poetry", song=False)
    write_tiny_poetry_tree(poetry)  # 200 ci among the classical parts: a val split longer than a block
    assert main(["prepare", "--quiet", "--source", str(poetry), "--corpus", "classical",
                 "--out", str(root / "classical")]) == 0
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY, encoding="utf-8")
    base = {**os.environ, "PYTHON": sys.executable, "PRESET": str(preset), "DEVICE": "cpu",
            "COMPILE": "--no-compile", "STEPS": "6", "K": "3", "TOP": "2", "WORK": str(tmp_path / "work"),
            "EXTRA": "--eval-iters 1", "OMP_NUM_THREADS": "1"}
    # all three parts with two splits, then parts 2-3 alone (a later lease): the ci-only arm trained in part 2
    for env, runs in (({"PRES": "2 4"}, {"ci": 6, "pre2": 2, "ft2": 4, "pre4": 4, "ft4": 2}),
                      ({"PARTS": "23", "PRES": "2"}, {"ci": 6, "pre2": 2, "ft2": 4})):
        out = tmp_path / "out"
        r = subprocess.run(["bash", str(SCRIPT), str(root), str(out)], env={**base, **env}, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        with tarfile.open(out / "gpu_ci.tgz") as tar:
            read = lambda name: tar.extractfile(f"./{name}").read().decode("utf-8")  # noqa: E731
            for run, steps in runs.items():
                evals = [json.loads(line) for line in read(f"metrics_{run}.jsonl").splitlines() if '"eval"' in line]
                assert evals[-1]["step"] == steps, (env, run)
            assert "ci-only rc=0" in read("ci.log")
            for run in runs:
                if run.startswith("ft"):
                    p = run[2:]
                    src = (tmp_path / "work" / f"pre{p}").resolve()
                    assert json.loads(read(f"config_{run}.json"))["init_from"]["run"] == str(src)
                    assert f"arm {p} rc=0" in read(f"pre{p}.log")
                if not run.startswith("pre"):
                    assert "device cpu rc=0" in read(f"ce_{run}.log"), read(f"ce_{run}.log")[-2000:]
                    rep = json.loads(read(f"ce_{run}.json"))
                    assert 0 <= rep["turing"]["auc"] <= 1 and rep["k"] == 3

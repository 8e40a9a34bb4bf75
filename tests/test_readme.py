"""Every command the README's Usage block shows runs (issue 10: two of them were red for a new user).

The commands are read from README.md itself, in order, and run in one scratch folder so that the
relative paths they name (data/ci, runs/ci, runs/count) are the ones earlier commands wrote. Only
the cost is cut, never the meaning: the corpus is the tiny synthetic one (TIANCI_POETRY_SOURCE),
training stops after a few steps, budgets shrink to a second, benches and samples to a few tokens
(cut flags are appended, and argparse lets the last value win; the ladder trains three rungs;
`sample --compile` runs without --compile, see DROP). `serve` is started and asked for
/healthz; the torchrun line runs with two gloo processes."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tianci.cli import main

REPO = Path(__file__).resolve().parents[1]


def usage_commands() -> list[str]:
    """The command lines of the README's `## Usage` code block (comments and the venv line dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Usage\s*\n```[a-z]*\n(.*?)```", text, re.S)
    assert block, "README.md has no ## Usage code block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [shlex.join(words) for words in lines if words and words[0] in ("tianci", "torchrun")]


COMMANDS = usage_commands()

# Cuts appended per subcommand (argparse: the last value wins), so each command does its job in seconds.
TRAIN_CUT = ["--max-iters", "2", "--eval-iters", "1", "--eval-interval", "1", "--batch-size", "4", "--no-progress"]
CUTS = {"train": TRAIN_CUT, "sample": ["--max-new-tokens", "8"], "compose-eval": [],
        "bench": ["--rounds", "1", "--decode-tokens", "2", "--quiet", "--peak-size", "128"],
        "ladder": ["--budget-seconds", "1", "--rungs", "counting", "bigram", "ci-cpu"]}
# Dropped flags, each with its reason. --compile: torch.compile of the decoding step takes 1-3 minutes
# on a 2-core CPU; test_generate.py::test_compiled_decoding_matches_eager runs the compiled step.
DROP = {"--compile"}


def rewrite(words: list[str], poetry: Path) -> list[str]:
    """The README's words, pointed at the tiny corpus and cut to a few seconds."""
    out = []
    it = iter(words)
    for w in it:
        if w == "--source":  # the README's example local copy -> the tiny corpus
            out += [w, str(poetry)]
            next(it)
        elif w == "--steps":  # bench: keep 0 (skip training) as written, else one step
            out += [w, str(min(int(next(it)), 1))]
        elif w == "--max-time":  # --resume ... --max-time: a few more steps instead of 10 minutes
            out += [w, "1"]
            next(it)
        elif w not in DROP:
            out.append(w)
    sub = out[1] if out[0] == "tianci" else "train"
    cut = list(CUTS.get(sub, []))
    if sub == "train" and "counting" in out:
        cut = []  # the counting model trains in one pass; step flags do not apply to it
    if sub == "train" and "--resume" in out:
        cut = ["--max-iters", "4", "--no-progress"]
    return out + cut


@pytest.fixture(scope="module")
def workdir(tiny_poetry_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    # poems separated by blank lines, as docs/own-text.md asks of your own text
    (d / "my.txt").write_text("春花秋月何时了，往事知多少。\n小楼昨夜又东风，故国不堪回首月明中。\n\n" * 40,
                              encoding="utf-8")
    return d


@pytest.fixture
def env(workdir, tiny_poetry_dir, monkeypatch) -> dict[str, str]:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TIANCI_POETRY_SOURCE", str(tiny_poetry_dir))
    # remembered sources and the download cache go to the scratch folder, not the user's home
    monkeypatch.setenv("TIANCI_CONFIG_DIR", str(workdir / ".config"))
    monkeypatch.setenv("TIANCI_CACHE_DIR", str(workdir / ".cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("line", COMMANDS)
def test_readme_usage_command_runs(line, env, tiny_poetry_dir, cipu_dir, rhyme_dir, capsys):
    """Guards: a command the README shows that fails for a new user (issue 10: `compose --start 明月`
    rejected Su Shi's own opening, `plot runs/ci runs/count` crashed on a counting run). The lines
    run in README order: each may use what the earlier ones wrote."""
    words = rewrite(shlex.split(line), tiny_poetry_dir)
    if words[0] == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *words[1:]]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return
    if words[1] == "serve":  # runs until stopped: start it, ask it, stop it
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tianci", *words[1:], "--port", str(port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            import httpx

            for _ in range(600):
                assert proc.poll() is None, proc.stdout.read()
                try:
                    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
                    return
                except httpx.TransportError:
                    time.sleep(0.1)
            pytest.fail("serve did not answer /healthz")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    code = main(words[1:])
    cap = capsys.readouterr()
    assert code == 0, (words, cap.err[-2000:])

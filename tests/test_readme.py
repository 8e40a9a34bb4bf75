"""Every command the README's Usage block and the docs/ pages show runs (issue 10: two README
commands were red for a new user).

README: the commands are read from README.md itself, in order, and run in one scratch folder so that
the relative paths they name (data/ci, runs/ci, runs/count) are the ones earlier commands wrote.

docs/*.md: every line of a ```bash block, every `$ ` line of a transcript block and every `tianci ...`
code span in the prose is a command (see doc_commands). Each page is followed in its own scratch
folder (its `## English` half in another: it repeats the commands for a reader who reads only it),
a copy of one shared base: the tiny corpus prepared as data/ci, one tiny trained run as runs/ci (and
as runs/demo, what `make demo` leaves), and the text files the pages name. Classified by classify():
a transcript that shows `tianci CMD: error: ...` after a command is an error example: it must exit 2
with exactly that line. A command that says `--device cuda` needs CUDA and is skipped, counted, where
there is none (a transcript whose output says device=cuda must say so in its command). Templates
(`tianci ladder --bpe-vocab N`), package installs and shell setup are in SKIP, each with its reason; a
new command that is none of these fails test_every_docs_command_is_classified. The pages name no path
of the machine they were written on (test_docs_name_no_machine_paths).

Only the cost is cut, never the meaning: the corpus is the tiny synthetic one (TIANCI_POETRY_SOURCE,
plus a few poems that carry every character the docs type), training stops after a few steps,
budgets shrink to a second, benches and samples to a few tokens (CUTS), the ladder evaluates fewer
tokens, `--compile` is dropped (DROP). `serve` is started and asked for /healthz; the torchrun line
runs with two gloo processes."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tianci.cli import COMMANDS as SUBCOMMANDS
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

# Cuts per subcommand. A number caps the flag's value (a smaller one as written stays: `--steps 0`
# skips training, `--decode-tokens 0` decoding); a flag the line does not give is added with it; a
# list or None (a bare switch) is added only where the line does not set the flag itself.
TRAIN_CUT = {"--max-iters": 2, "--max-time": 1, "--eval-iters": 1, "--eval-interval": 1, "--batch-size": 4,
             "--no-progress": None}
CUTS = {"train": TRAIN_CUT, "sample": {"--max-new-tokens": 8},
        "bench": {"--steps": 1, "--rounds": 1, "--decode-tokens": 2, "--peak-size": 128, "--quiet": None},
        "ladder": {"--budget-seconds": 0.25, "--rungs": ["counting", "bigram", "ci-cpu"]},
        "critic": {"--k": 6}}
RESUME_CUT = {"--max-iters": 4, "--max-time": 1, "--no-progress": None}  # a few more steps, not 10 minutes
# Dropped flags, each with its reason. --compile / --decode-compile: torch.compile of the decoding step
# takes 1-3 minutes on a 2-core CPU; test_generate.py::test_compiled_decoding_matches_eager runs it.
DROP = {"--compile", "--decode-compile"}
# Evaluation sizes fixed in code, cut the same way (a cost, not a meaning): the ladder evaluates 20
# batches of 16x32 tokens twice a rung, most of a rung on the tiny corpus; `bench --run` measures
# what int8 costs over 32,768 val tokens, twice. The test evaluates 2 batches.
LADDER_EVAL_TOKENS = 2 * 16 * 32
QUANT_QUALITY_TOKENS = 2 * 16 * 64


def _capped(value: str, cap) -> str:
    return value if float(value) <= cap else str(cap)


def rewrite(words: list[str], poetry: Path) -> list[str]:
    """The words of a tianci / torchrun line, pointed at the tiny corpus and cut to a few seconds."""
    out = []
    it = iter(words)
    for w in it:
        if w == "--source":  # the README's example local copy -> the tiny corpus
            out += [w, str(poetry)]
            next(it)
        elif w not in DROP:
            out.append(w)
    sub = out[1] if out[0] == "tianci" else "train"
    cuts = CUTS.get(sub, {})
    if sub == "train" and "counting" in out:
        cuts = {}  # the counting model trains in one pass; step flags do not apply to it
    if sub == "train" and "--resume" in out:
        cuts = RESUME_CUT
    for flag, cap in cuts.items():
        if flag not in out:
            out += [flag] if cap is None else [flag, *map(str, cap if isinstance(cap, list) else [cap])]
        elif isinstance(cap, (int, float)):
            i = out.index(flag) + 1
            out[i] = _capped(out[i], cap)
    return out


@dataclass
class Result:
    code: int
    out: str
    err: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_words(words: list[str], env: dict[str, str], capsys) -> Result:
    """Run a rewritten line: torchrun as two gloo processes, serve until it answers /healthz, anything
    else in this process (imports and the tiny corpus shared)."""
    if words[0] == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *words[1:]]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        return Result(r.returncode, r.stdout, r.stderr)
    if words[1] == "serve":  # runs until stopped: start it, ask it, stop it
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tianci", *words[1:], "--port", str(port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            import httpx

            for _ in range(600):
                assert proc.poll() is None, proc.stdout.read()
                try:
                    status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
                    return Result(0 if status == 200 else 1, "", f"/healthz answered {status}")
                except httpx.TransportError:
                    time.sleep(0.1)
            return Result(1, "", "serve did not answer /healthz")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    code = main(words[1:])
    cap = capsys.readouterr()
    return Result(code, cap.out, cap.err)


@pytest.fixture(scope="module")
def workdir(tiny_poetry_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    # poems separated by blank lines, as docs/own-text.md asks of your own text
    (d / "my.txt").write_text("春花秋月何时了，往事知多少。\n小楼昨夜又东风，故国不堪回首月明中。\n\n" * 40,
                              encoding="utf-8")
    return d


def scratch_env(monkeypatch, folder: Path, poetry: Path) -> dict[str, str]:
    """cwd = folder, the tiny corpus as the poetry source, remembered sources and the download cache in
    the folder (not the user's home), the cheap ladder evaluation; the environment for subprocesses."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TIANCI_POETRY_SOURCE", str(poetry))
    monkeypatch.setenv("TIANCI_CONFIG_DIR", str(folder / ".config"))
    monkeypatch.setenv("TIANCI_CACHE_DIR", str(folder / ".cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr("tianci.measure.ladder.EVAL_TOKENS", LADDER_EVAL_TOKENS)
    from tianci.measure import bench

    quality = getattr(bench.quant_quality, "func", bench.quant_quality)
    monkeypatch.setattr(bench, "quant_quality", functools.partial(quality, tokens=QUANT_QUALITY_TOKENS))
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("line", COMMANDS)
def test_readme_usage_command_runs(line, workdir, tiny_poetry_dir, cipu_dir, rhyme_dir, monkeypatch, capsys):
    """Guards: a command the README shows that fails for a new user (issue 10: `compose --start 明月`
    rejected Su Shi's own opening, `plot runs/ci runs/count` crashed on a counting run). The lines
    run in README order: each may use what the earlier ones wrote."""
    env = scratch_env(monkeypatch, workdir, tiny_poetry_dir)
    r = run_words(rewrite(shlex.split(line), tiny_poetry_dir), env, capsys)
    assert r.code == 0, (line, r.out[-2000:], r.err[-3000:])


# ----------------------------------------------------------------------------- the docs' commands

DOCS = REPO / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
SHOWN_ERROR = re.compile(r"^tianci [\w-]+: error: ")


@dataclass
class DocCommand:
    """One command a docs page shows."""

    doc: str    # its page, e.g. "compose.md"
    line: int   # where it starts on the page (1-based)
    text: str   # as written: no `$ ` prompt, continuation lines joined, whitespace collapsed
    english: bool  # under the page's `## English` heading (followed in a folder of its own)
    inline: bool = False  # a code span in the prose, not a line of a code block
    shown_error: str | None = None  # a transcript's `tianci CMD: error: ...` line right after it
    shown_output: list[str] = field(default_factory=list)  # a transcript's lines after it

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _transcript(body: str) -> list[tuple[int, str, list[str]]]:
    """(line offset, command, output lines) for each `$ ` line of a transcript block."""
    out: list[tuple[int, str, list[str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        start, text = i, lines[i][2:]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        out.append((start, text, output))
    return out


def doc_commands(path: Path) -> list[DocCommand]:
    """The commands of one page, in page order: every line of a bash block (comment lines skipped,
    continuations joined), every `$ ` line of an unlabelled/console block (the lines after it are its
    output), and every code span in the prose that runs tianci or torchrun (a bare `tianci CMD` names
    a subcommand; quoted error messages are not commands). Python and other blocks are not commands."""
    text = path.read_text(encoding="utf-8")
    english = [(m.start(), m.group(1) == "English") for m in re.finditer(r"^## (.*)$", text, re.M)]
    found: list[tuple[int, DocCommand]] = []

    def add(offset: int, cmd: str, **kw) -> None:
        in_english = next((e for at, e in reversed(english) if at < offset), False)
        found.append((offset, DocCommand(path.name, text.count("\n", 0, offset) + 1, " ".join(cmd.split()),
                                         in_english, **kw)))

    prose = text
    for m in FENCE.finditer(text):
        prose = prose[:m.start()] + re.sub(r"[^\n]", " ", m.group(0)) + prose[m.end():]
        info, body, at = m.group(1).strip(), m.group(2), m.start(2)
        starts = [0] + [i + 1 for i, c in enumerate(body) if c == "\n"]
        if info in ("bash", "sh", "shell"):
            lines = body.splitlines()
            i = 0
            while i < len(lines):
                start, cmd = i, lines[i]
                while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd.rstrip()[:-1] + " " + lines[i]
                i += 1
                cmd = re.sub(r"(^|\s)#.*$", "", cmd)  # a trailing comment
                if cmd.strip():
                    add(at + starts[start], cmd)
        elif info in ("", "console", "text"):
            for start, cmd, output in _transcript(body):
                shown = output[0] if output and SHOWN_ERROR.match(output[0]) else None
                add(at + starts[start], cmd, shown_error=shown, shown_output=output)
    for m in SPAN.finditer(prose):
        span = m.group(1)
        if re.search(r"(^|\s)(tianci|torchrun)\s+\S", span) and ": error:" not in span:
            add(m.start(1), span, inline=True)
    return [c for _, c in sorted(found, key=lambda f: f[0])]


DOC_COMMANDS = [c for p in sorted(DOCS.glob("*.md")) for c in doc_commands(p)]

# Commands the test does not run, each with its reason (keyed by the command as written, whitespace
# collapsed). A template's concrete form is named where another line runs it.
SKIP = {
    'pip install -e ".[interop]"': "installs packages (network); `make test` installs the interop extra",
    'pip install -e ".[llamacpp]"': "installs llama-cpp-python (compiles llama.cpp for ~25 min, network)",
    "export TIANCI_CIPU_SOURCE=$HOME/data/couyun/ci_pu": "shell setup with the reader's own path; the test "
                                                         "sets TIANCI_CIPU_SOURCE",
    "export TIANCI_RHYME_SOURCE=$HOME/data/chinese_word_rhyme/data": "shell setup with the reader's own path; "
                                                                     "the test sets TIANCI_RHYME_SOURCE",
    "export TIANCI_POETRY_SOURCE=$HOME/data/chinese-poetry": "shell setup with the reader's own path; the test "
                                                             "points TIANCI_POETRY_SOURCE at the tiny corpus",
    "tianci cipai NAME": "template (NAME); `tianci cipai 浣溪沙 --data data/ci` runs it",
    "OMP_NUM_THREADS=1 tianci ladder ... --quiet": "template (...): the `tianci ladder` block above, with --quiet",
    "tianci train --preset P --max-time 600": "template (P); the speed.md time-to-quality lines run both presets",
    "tianci bench --run DIR": "template (DIR); `tianci bench --run runs/ci --steps 0 ...` runs it",
    "torchrun --nproc_per_node=N -m tianci train ...": "template (N, ...); the README's torchrun line runs "
                                                      "two processes",
    "torchrun --standalone --nproc_per_node=1 -m tianci train --preset ci-gpu ...": "template (...) of a CUDA "
                                                                                   "run; the README's torchrun "
                                                                                   "line runs on gloo",
    "OMP_NUM_THREADS=1 taskset -c N tianci train --preset ci-cpu --data DATA --max-time 150 --eval-interval 100":
        "template (N, DATA); the time-to-quality `tianci train --preset ci-cpu ...` line runs it",
    "tianci ladder --bpe-vocab N": "template (N); `tianci ladder --bpe-vocab 8192` runs it",
    "python benchmarks/load_test.py --run runs/ci": "a load benchmark (servers x clients x 10 s a cell); "
                                                    "tests/test_load_test.py smoke-tests it (1 client, ~1 s a cell)",
    "python benchmarks/load_test.py --run runs/ci --clients 16 --duration 20 --json load.json":
        "a load benchmark (20 s a cell); tests/test_load_test.py runs the script as a smoke test",
    "python benchmarks/load_test.py --url http://127.0.0.1:8000": "needs a server already running; "
                                                                  "tests/test_load_test.py runs the script",
}
# Subcommands that need an optional extra, by the modules they import.
EXTRAS = {"export": ("transformers", "gguf"), "import": ("transformers", "gguf")}  # the interop extra


@dataclass
class Plan:
    """What the test does with a docs command."""

    kind: str  # run | error (must exit 2 with the line shown) | cuda | skip | name (a subcommand named in
    # prose) | unknown (the test cannot classify it: a failure)
    why: str = ""
    env: dict[str, str] = field(default_factory=dict)  # leading VAR=value words
    words: list[str] = field(default_factory=list)  # the tianci / torchrun words (a `| head -N` dropped)


def classify(c: DocCommand) -> Plan:
    if c.text in SKIP:
        return Plan("skip", SKIP[c.text])
    try:
        words = shlex.split(c.text, comments=not c.inline)
    except ValueError as e:
        return Plan("unknown", f"not a shell line: {e}")
    if shlex.join(words) in COMMANDS and not c.inline:  # covered; a server start alone costs seconds
        return Plan("skip", "the README's Usage block runs the same line (test_readme_usage_command_runs)")
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    if "|" in words:  # `tianci cipai --list | head -5`: the test keeps the whole output
        i = words.index("|")
        if not re.fullmatch(r"head( -n)? -?\d+", " ".join(words[i + 1:])):
            return Plan("unknown", f"a pipe to {' '.join(words[i + 1:])!r}")
        words = words[:i]
    placeholders = [w for w in words if re.fullmatch(r"[A-Z]+|\.\.\.", w)]
    if placeholders:
        return Plan("unknown", f"a template ({', '.join(placeholders)}): add it to SKIP, naming the line "
                               "that runs its concrete form")
    if not words or words[0] not in ("tianci", "torchrun") or any(w in ("&&", ";", ">", "<") for w in words):
        return Plan("unknown", "not a tianci or torchrun line: add it to SKIP with its reason")
    if words[0] == "tianci" and (len(words) < 2 or words[1] not in SUBCOMMANDS):
        return Plan("unknown", f"`tianci {words[1] if len(words) > 1 else ''}` is not a tianci subcommand")
    if c.inline and len(words) == 2:
        return Plan("name", "names a subcommand in the prose", env, words)
    cuda = "--device" in words[:-1] and words[words.index("--device") + 1].startswith("cuda")
    if any("device=cuda" in line for line in c.shown_output) and not cuda:
        return Plan("unknown", "the output shown ran on CUDA but the command does not say --device cuda "
                               "(on a CPU it would run the GPU model there)")
    if cuda:
        return Plan("cuda", "needs CUDA (--device cuda)", env, words)
    if c.shown_error:
        return Plan("error", f"exits 2: {c.shown_error}", env, words)
    return Plan("run", "", env, words)


# Han characters every docs command types (prompts, starts, acrostics, --text): the tiny corpus holds
# them, so a start or prompt is refused for its tone, never for a vocabulary the docs did not mean.
DOC_HAN = sorted({ch for c in DOC_COMMANDS for ch in c.text if "\u4e00" <= ch <= "\u9fff"})
JIUZHANGJI = ["{}张机。", "采桑陌上试春衣。", "风晴日暖慵无力，桃花枝上，啼莺言语，不肯放人归。"]


@pytest.fixture(scope="module")
def docs_base(tmp_path_factory, tiny_poetry_dir, cipu_dir, rhyme_dir) -> tuple[Path, Path]:
    """(base folder, poetry source): the tiny corpus plus poems carrying DOC_HAN and six 九张机 (the
    corpus-only 词牌 compose.md shows), prepared as data/ci; one tiny ci-cpu run as runs/ci and
    runs/demo; the text files own-text.md names (poems separated by blank lines)."""
    root = tmp_path_factory.mktemp("docs")
    poetry = root / "poetry"
    shutil.copytree(tiny_poetry_dir, poetry)
    lines = ["".join(DOC_HAN[i:i + 7]) + "。" for i in range(0, len(DOC_HAN), 7)]
    extra = [{"rhythmic": "浣溪沙", "author": "无名氏", "paragraphs": lines[i:i + 4]} for i in range(0, len(lines), 4)]
    extra += [{"rhythmic": "九张机", "author": "无名氏", "paragraphs": [JIUZHANGJI[0].format(n), *JIUZHANGJI[1:]]}
              for n in "一两三四五六"]
    (poetry / "宋词" / "ci.song.2000.json").write_text(json.dumps(extra, ensure_ascii=False), encoding="utf-8")
    base = root / "base"
    base.mkdir()
    zh = "春花秋月何时了，往事知多少。\n小楼昨夜又东风，故国不堪回首月明中。\n\n"
    en = "The moon above the river,\nthe wind along the shore.\n\n"
    for name, poem in (("我的诗.txt", zh), ("更多.txt", zh), ("my_poems.txt", en), ("more.txt", en)):
        (base / name).write_text(poem * 20, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        scratch_env(mp, base, poetry)
        assert main(["prepare", "--out", "data/ci", "--quiet"]) == 0
        assert main(rewrite(["tianci", "train", "--preset", "ci-cpu", "--data", "data/ci", "--out", "runs/ci"],
                            poetry)[1:]) == 0
    shutil.copytree(base / "runs" / "ci", base / "runs" / "demo")
    return base, poetry


@pytest.fixture(scope="module")
def docs_folders(docs_base, tmp_path_factory):
    """The scratch folder of a page (or of its English half): a copy of the base, made on first use."""
    made: dict[tuple[str, bool], Path] = {}

    def folder(c: DocCommand) -> Path:
        key = (c.doc, c.english)
        if key not in made:
            made[key] = tmp_path_factory.mktemp(c.doc.removesuffix(".md") + ("-en" if c.english else ""))
            shutil.copytree(docs_base[0], made[key], dirs_exist_ok=True)
        return made[key]

    return folder


RUNNABLE = [c for c in DOC_COMMANDS if classify(c).kind != "name"]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNNABLE, ids=[c.id for c in RUNNABLE])
def test_docs_command_runs(cmd, docs_base, docs_folders, monkeypatch, capsys):
    """Guards: a command a docs page shows that fails for a reader (issue 10: docs/compose.md's
    `--start` examples and paths from a development machine). Each page's commands run in page
    order in the page's folder; an error example must fail exactly as the page shows."""
    plan = classify(cmd)
    if plan.kind == "skip":
        pytest.skip(plan.why)
    assert plan.kind != "unknown", f"{cmd.id}: {plan.why}"  # test_every_docs_command_is_classified says more
    if plan.kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"{plan.why}: torch.cuda.is_available() is False here")
    missing = [m for m in EXTRAS.get(plan.words[1], ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the interop extra is not installed (no {', '.join(missing)}); `make test` installs it")
    env = scratch_env(monkeypatch, docs_folders(cmd), docs_base[1])
    for k, v in plan.env.items():
        monkeypatch.setenv(k, v)
    r = run_words(rewrite(plan.words, docs_base[1]), {**env, **plan.env}, capsys)
    if plan.kind == "error":
        assert (r.code, r.err.strip()) == (2, cmd.shown_error), (cmd.id, r.out[-2000:])
    else:
        assert r.code == 0, (cmd.id, cmd.text, r.out[-2000:], r.err[-3000:])


def test_every_docs_command_is_classified():
    """Guards: a command added to docs/ that the docs test would not run and nobody decided to skip
    (a template, a shell setup line, a pipe, a GPU transcript without --device cuda), a SKIP entry
    left behind after its command changed, and a subcommand the prose names that does not exist."""
    plans = [(c, classify(c)) for c in DOC_COMMANDS]
    unknown = [f"{c.id}: {c.text!r}: {p.why}" for c, p in plans if p.kind == "unknown"]
    assert not unknown, "\n".join(unknown)
    stale = sorted(set(SKIP) - {c.text for c in DOC_COMMANDS})
    assert not stale, f"SKIP names commands no docs page shows any more: {stale}"
    kinds = {k: sum(p.kind == k for _, p in plans) for k in ("run", "error", "cuda", "skip", "name")}
    # Every page has commands, and the error examples are found (they are read from the transcripts).
    assert {c.doc for c, p in plans if p.kind in ("run", "error")} == {p.name for p in DOCS.glob("*.md")}
    assert kinds["run"] >= 30 and kinds["error"] >= 3, kinds


MACHINE_PATH = re.compile(r"/work/|\.\./shared|/shared/data|/tmp/|/home/\w|/root/|/Users/\w|[A-Z]:\\")


def test_docs_name_no_machine_paths():
    """Guards: docs that send a reader to a path of the machine they were written on (issue 10:
    docs/compose.md exported a path inside the developers' workspace, `.../shared/data/...`)."""
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sorted(DOCS.glob("*.md"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not hits, "\n".join(hits)

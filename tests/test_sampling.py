"""Sampling settings (tianci.sampling): the min-p filter against an independent computation, with the
other filters and the composer's masks; composing's defaults read from one place by every caller; the
`compose-eval --sweep` grid and its table on a tiny trained run."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tianci.cli import main
from tianci.errors import ParameterError, TianciError
from tianci.generate import SampleOptions, filter_logits, next_token
from tianci.sampling import COMPOSE_SAMPLING, CONTINUE_SAMPLING, check_sampling

REPO = Path(__file__).resolve().parents[1]
NEG = float("-inf")
rows = st.lists(st.lists(st.one_of(st.floats(-20, 20, allow_nan=False, width=32), st.just(NEG),
                                   st.sampled_from([0.0, 1.0, 1.5])), min_size=2, max_size=40)
                .filter(lambda r: any(x != NEG for x in r)), min_size=1, max_size=5)


def numpy_min_p(row: list[float], temperature: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, sure): the tokens min-p keeps, from the probabilities themselves (float64 softmax), and
    where that is sure (not within float32 rounding of the threshold)."""
    z = np.array(row, dtype=np.float64) / temperature
    p = np.exp(z - z[np.isfinite(z)].max())
    p /= p.sum()
    ratio = p / p.max()
    kept = ratio >= min_p
    with np.errstate(divide="ignore"):
        sure = (p == 0) | (np.abs(np.log(ratio) - math.log(min_p)) > 1e-4 * (1 + abs(math.log(min_p))))
    return kept, sure


@settings(max_examples=120, deadline=None)
@given(rows=rows, temperature=st.floats(0.1, 3.0), min_p=st.floats(0.001, 0.999))
def test_min_p_keeps_exactly_the_tokens_at_min_p_of_the_top(rows, temperature, min_p):
    """Guards min-p keeping another set than {p_i >= min_p * p_max} after temperature (applied before
    temperature, against the sum instead of the top, or dropping the top token), or reviving a masked
    token; checked row by row against a float64 numpy softmax."""
    padded = [r + [NEG] * (40 - len(r)) for r in rows]
    out = filter_logits(torch.tensor(padded), temperature, min_p=min_p)
    for i, r in enumerate(padded):
        kept, sure = numpy_min_p(r, temperature, min_p)
        got = torch.isfinite(out[i]).numpy()
        assert (got[sure] == kept[sure]).all(), (r, temperature, min_p)
        assert got[int(np.argmax(r))]  # the top token, whatever rounding does at the threshold


@settings(max_examples=80, deadline=None)
@given(rows=rows, temperature=st.floats(0.05, 3.0), k=st.integers(0, 45), p=st.floats(0.01, 1.0),
       min_p=st.floats(0.0, 0.9999), seed=st.integers(0, 2**31 - 1))
def test_min_p_with_top_k_top_p_never_empties_a_row(rows, temperature, k, p, min_p, seed):
    """Guards a row left with every token excluded (a NaN draw, a crash in the composer's last cell) when
    min-p meets top-k / top-p and masked tokens, and min-p changing what top-k / top-p keep: the kept set
    is theirs intersected with min-p's own, the top token survives, and the draw is a kept token."""
    x = torch.tensor([r + [NEG] * (40 - len(r)) for r in rows])
    out = filter_logits(x, temperature, k, p, min_p)
    kept = torch.isfinite(out)
    assert kept.any(dim=-1).all()
    assert torch.equal(x.masked_fill(~kept, NEG).max(-1).values, x.max(-1).values)  # a top token survives (ties: one)
    assert not kept[~torch.isfinite(x)].any()  # masked stays masked
    both = torch.isfinite(filter_logits(x, temperature, k, p)) & torch.isfinite(filter_logits(x, temperature, min_p=min_p))
    assert torch.equal(kept, both)
    tok = next_token(x, temperature, k, p, torch.Generator().manual_seed(seed), min_p)
    assert kept.gather(-1, tok[:, None]).all()


def test_min_p_off_values_change_nothing():
    """Guards 0 / None (off) filtering anything, and greedy decoding being affected by min-p."""
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    for off in (None, 0, 0.0):
        assert torch.equal(filter_logits(x, 0.7, min_p=off), filter_logits(x, 0.7))
    assert torch.equal(filter_logits(x, 0.0, min_p=0.5), filter_logits(x, 0.0))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_min_p_is_one_clear_error(bad):
    """Guards an out-of-range min_p reaching torch (1.0 would keep only exact ties of the top, a negative
    one nothing changes silently) instead of a TianciError naming it and its range."""
    with pytest.raises(TianciError, match=r"min_p=.*\[0, 1\)"):
        SampleOptions(min_p=bad).validate()
    with pytest.raises(ParameterError, match=r"min_p=.*\[0, 1\)"):
        check_sampling(min_p=bad)
    SampleOptions(min_p=0).validate()
    check_sampling(0.8, 0, 1.0, 0.0)


def test_min_p_composes_within_the_form():
    """Guards min-p in the constrained decoder dropping the only legal characters (masked tokens stay
    masked, the likeliest legal one survives): even at 0.999, near greedy, every poem keeps its form and
    rhyme, whatever the temperature and seed, and writes the greedy poem."""
    from test_compose import ALL_HAN, FORM, PHON, TinyLM, tok_of
    from tianci.ci.compose import compose_batch
    from tianci.ci.compose_eval import check_poem

    tok = tok_of(ALL_HAN)
    model = TinyLM(tok.vocab_size, 1)
    greedy = compose_batch(model, tok, FORM, 1, phon=PHON, seed=0, temperature=0, author="某")[0].text
    for seed in range(3):
        rs = compose_batch(model, tok, FORM, 2, phon=PHON, seed=seed, temperature=2.0, min_p=0.999, author="某")
        for r in rs:
            c = check_poem(r.text, FORM, PHON)
            assert c.form_ok and c.rhyme_hits == c.rhyme_total and r.text == greedy


# ----------------------------------------------------------------------------- one source for the defaults

def test_every_compose_caller_reads_compose_sampling():
    """Guards composing's defaults drifting apart again (0.8 / 0.95 were written out in nine places): the
    CLI's flags, compose / compose_batch, compose-eval, the server's request models and job parameters
    all take theirs from tianci.sampling.COMPOSE_SAMPLING, and `tianci sample` from CONTINUE_SAMPLING."""
    from tianci.ci import compose as C
    from tianci.ci.compose_eval import evaluate
    from tianci.cli import build_parser
    from tianci.serve.api import request_models
    from tianci.serve.limits import Limits
    from tianci.serve.stream import ComposeParams

    S = COMPOSE_SAMPLING
    want = {"temperature": S.temperature, "top_k": S.top_k, "top_p": S.top_p, "min_p": S.min_p}
    for fn in (C.compose, C.compose_batch, evaluate):
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in want} == want, fn.__name__
    assert {k: getattr(ComposeParams("x", 0), k) for k in want} == want
    fields = request_models(Limits())[1].model_fields
    assert {k: fields[k].default for k in want} == want
    for cmd, defaults in (("compose", S), ("compose-eval", S), ("sample", CONTINUE_SAMPLING)):
        args = build_parser([cmd]).parse_args([cmd, "--run", "r"] + (["--cipai", "x"] if cmd == "compose" else []))
        got = {k: getattr(args, k) for k in want if hasattr(args, k)}
        assert got == {k: getattr(defaults, k) for k in got} and len(got) >= 3, cmd
    assert SampleOptions().temperature == CONTINUE_SAMPLING.temperature


def test_playground_sliders_start_at_the_python_defaults():
    """Guards the playground's sliders showing (and sending) another temperature / min-p than the
    server's defaults: index.html's initial values are COMPOSE_SAMPLING's (compose) and CONTINUE_SAMPLING's
    (free writing)."""
    html = (REPO / "src/tianci/serve/static/index.html").read_text(encoding="utf-8")

    def slider(name: str) -> tuple[float, float]:
        value = re.search(rf'<input id="{name}" type="range"[^>]*value="([\d.]+)"', html).group(1)
        shown = re.search(rf'<output id="{name}-out">([\d.]+)</output>', html).group(1)
        return float(value), float(shown)
    assert slider("temperature") == (COMPOSE_SAMPLING.temperature,) * 2
    assert slider("min-p") == (COMPOSE_SAMPLING.min_p or 0.0,) * 2
    assert slider("free-temperature") == (CONTINUE_SAMPLING.temperature,) * 2


# ----------------------------------------------------------------------------- compose-eval --sweep

BASE = {"temperature": 0.8, "top_k": None, "top_p": 0.95, "min_p": None}


def test_sweep_grid_in_order_over_the_flags():
    """Guards a sweep dropping or reordering combinations, or losing the command's own flags for the
    names it does not vary."""
    from tianci.ci.compose_sweep import parse_sweep

    got = parse_sweep("temperature=0.7,1.0 min-p=0,0.05", BASE)
    assert [(s["temperature"], s["min_p"]) for s in got] == [(0.7, 0), (0.7, 0.05), (1.0, 0), (1.0, 0.05)]
    assert all(s["top_p"] == 0.95 and s["top_k"] is None for s in got)
    assert parse_sweep("top_k=0,5", BASE)[1]["top_k"] == 5
    pen = parse_sweep("presence-penalty=0,0.5 frequency_penalty=-1", BASE)
    assert [(s["presence_penalty"], s["frequency_penalty"]) for s in pen] == [(0, -1), (0.5, -1)]


@pytest.mark.parametrize("grid,words", [("temp=0.7", "NAME=V1,V2"), ("temperature", "NAME=V1,V2"), ("", "NAME"),
                                        ("top_p=0.9,x", "numbers"), ("top_k=1.5", "integers"),
                                        ("min_p=1", "[0, 1)"), ("top_p=0", "(0, 1]"),
                                        ("presence_penalty=0,3", "-2..2"),
                                        ("top_p=0.9 top_p=1", "named twice"),
                                        ("temperature=" + ",".join(str(i / 10) for i in range(1, 66)), "at most 64")])
def test_bad_sweep_is_one_line_before_loading(grid, words, tmp_path, capsys):
    """Guards a malformed --sweep failing after minutes of loading and composing, or as a traceback: it
    exits 2 at once with one `tianci compose-eval: error:` line naming sweep (the run does not exist)."""
    assert main(["compose-eval", "--run", str(tmp_path / "none"), "--data", str(tmp_path), "--sweep", grid]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tianci compose-eval: error: sweep=") and words in err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from server_fixtures import build_world

    return build_world(tmp_path_factory.mktemp("sweep-world"))


def test_sweep_on_a_tiny_run_measures_each_setting(world, rhyme_dir, tmp_path, capsys):
    """Guards a sweep whose rows are not the settings asked for or not measured at them (copied from one
    report, or hard-coded): two settings on a tiny trained run, same seeds and real poems, each row the
    headline of its own compose-eval report, one table line each."""
    pytest.importorskip("sklearn")
    out = tmp_path / "sweep.json"
    argv = ["compose-eval", "--run", str(world["run"]), "--data", str(world["data"]), "--cipu-source",
            str(world["cipu_dir"]), "--rhyme-source", str(rhyme_dir), "--k", "3", "--top", "2", "--seed", "4"]
    assert main([*argv, "--sweep", "temperature=0.5,1.5 min_p=0.05", "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 5 and table[3].split()[0] == "real" and table[0].split()[:4] == ["temp", "top_k", "top_p", "min_p"]
    assert [line.split()[:6] for line in table[1:3]] == [["0.5", "-", "0.95", "0.05", "0", "0"],
                                                         ["1.5", "-", "0.95", "0.05", "0", "0"]]
    res = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["temperature"], r["top_p"], r["min_p"]) for r in res["rows"]] == [(0.5, 0.95, 0.05), (1.5, 0.95, 0.05)]
    reps = res["reports"]
    assert [(r["temperature"], r["min_p"], r["seed"], r["k"]) for r in reps] == [(0.5, 0.05, 4, 3), (1.5, 0.05, 4, 3)]
    for row, rep in zip(res["rows"], reps):
        assert row["auc"] == rep["turing"]["auc"] and 0 <= row["auc"] <= 1
        assert row["judge"] == rep["overall"]["judge_gen"] and row["form_ok"] == 1.0
        assert row["broken"] == rep["overall"]["craft_gen"]["broken_clauses"]
    assert reps[0]["per_cipai"][0]["samples"] != reps[1]["per_cipai"][0]["samples"]  # composed at each setting
    assert [x["text"] for x in reps[0]["per_cipai"][0]["real"]] == [x["text"] for x in reps[1]["per_cipai"][0]["real"]]
    assert res["real"]["judge"] == reps[1]["overall"]["judge_real"]
    # a single setting through the same command composes the same poems as its sweep row
    assert main([*argv, "--temperature", "1.5", "--min-p", "0.05", "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in alone["per_cipai"][0]["samples"]] == [s["text"] for s in reps[1]["per_cipai"][0]["samples"]]


def test_compose_eval_themes_are_asked_and_counted_from_the_text(world, rhyme_dir, tmp_path, capsys):
    """Guards `compose-eval --themes` (issue 12 item 4: what --theme costs, measured) asking for words no
    held-out poem of the 词牌 holds, or counting a word as found that the poem does not hold (read from
    decoder state rather than from the text), or a summary that is not the sum of its poems."""
    pytest.importorskip("sklearn")
    from tianci.ci.corpus_stats import load_corpus

    out = tmp_path / "themes.json"
    assert main(["compose-eval", "--run", str(world["run"]), "--data", str(world["data"]), "--cipu-source",
                 str(world["cipu_dir"]), "--rhyme-source", str(rhyme_dir), "--k", "3", "--top", "2", "--seed", "4",
                 "--themes", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text(encoding="utf-8"))
    assert rep["themes"] is True
    val = ["\n".join(p.paragraphs) for p in load_corpus(world["data"]).poems if p.split == "val"]
    asked = found = 0
    for row in rep["per_cipai"]:
        for s in row["samples"]:
            assert all(any(w in v for v in val) for w in s["theme"])  # drawn from a held-out poem
            assert s["theme_found"] == [w for w in s["theme"] if w in s["text"]]
            asked, found = asked + len(s["theme"]), found + len(s["theme_found"])
    assert asked > 0, "no theme was asked for: the measure is off"
    assert (rep["overall"]["theme_asked"], rep["overall"]["theme_found"]) == (asked, found)
    assert f"theme words found {found / asked:.1%} ({found} of {asked} asked)" in printed


def test_tianci_critic_fits_one_that_compose_and_compose_eval_then_use(world, rhyme_dir, tmp_path, capsys):
    """Guards `tianci critic` (issue 12: reranking toward real ci) writing a critic nobody reads: after it,
    compose-eval's default is CRITIC_CANDIDATES drafts chosen with the critic (the report says which
    critic), `--critic off` is the judge alone, and `tianci compose` keeps the best of as many drafts."""
    pytest.importorskip("sklearn")
    import shutil

    from tianci.ci.critic import FILE, Critic
    from tianci.sampling import CRITIC_CANDIDATES

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)  # the module's run stays critic-free for the other tests
    src = ["--data", str(world["data"]), "--cipu-source", str(world["cipu_dir"]), "--rhyme-source", str(rhyme_dir)]
    assert main(["critic", "--run", str(run), *src, "--top", "3", "--k", "6"]) == 0
    out = capsys.readouterr().out
    critic = Critic.load(run)
    assert (run / FILE).is_file() and critic.n_gen == critic.n_real > 5 and f"{critic.cv_auc:.3f}" in out
    argv = ["compose-eval", "--run", str(run), *src, "--k", "3", "--top", "2", "--seed", "4", "--json"]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["candidates"] == CRITIC_CANDIDATES and rep["critic"]["cv_auc"] == critic.cv_auc
    from tianci.ci.judge import CRITIC_WEIGHT
    assert rep["critic"]["weight"] == CRITIC_WEIGHT
    # --critic-weight reaches the judge that picks the drafts (how the default was measured), and a
    # weight out of range is one line, before anything is composed
    assert main([*argv, "--critic-weight", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["critic"]["weight"] == 3.0
    assert main([*argv, "--critic-weight", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "critic_weight" in err and "0..10" in err, err
    assert main([*argv, "--critic", "off"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["candidates"] == 1 and off["critic"] is None
    compose = ["compose", "--run", str(run), *src, "--cipai", "浣溪沙", "--seed", "3", "--author", "某"]
    assert main(compose) == 0
    default = capsys.readouterr().out
    assert main([*compose, "--candidates", str(CRITIC_CANDIDATES)]) == 0
    assert capsys.readouterr().out == default


@pytest.mark.parametrize("cmd", ["critic", "compose-eval"])
def test_a_run_without_its_corpus_is_one_clear_line(cmd, tmp_path, capsys):
    """Guards `tianci critic` / `compose-eval` on a run whose config names no data directory crashing
    (a traceback) instead of saying what is missing and how to give it (--data)."""
    assert main([cmd, "--run", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"tianci {cmd}: error: no real poems to compare with"), err


# ----------------------------------------------------------------------------- OpenAI's repetition penalties

class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits never change, whatever the context: any change in what is
    drawn comes from the penalties alone."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        return self.logits.expand(B, T, -1).clone(), None


def reference_penalized_greedy(logits: list[float], steps: int, presence: float, frequency: float) -> list[int]:
    """OpenAI's formula, written out in plain Python: mu_j - c_j * frequency - [c_j > 0] * presence, c_j
    how often token j was drawn so far in this completion (the prompt not counted); greedy takes the first
    largest."""
    f32 = np.float32  # the sampler's own precision, so that near-ties fall the same way
    counts = [0] * len(logits)
    out = []
    for _ in range(steps):
        adjusted = [f32(mu) - (f32(frequency) * f32(c) + f32(presence) * f32(c > 0)) for mu, c in zip(logits, counts)]
        j = max(range(len(adjusted)), key=lambda i: (adjusted[i], -i))
        counts[j] += 1
        out.append(j)
    return out


@given(logits=st.lists(st.floats(-3, 3).map(lambda x: round(x, 2)), min_size=2, max_size=8),
       presence=st.sampled_from([0.0, 0.4, 1.0, 2.0, -0.5]), frequency=st.sampled_from([0.0, 0.3, 1.5]),
       prompt_len=st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_penalties_follow_openais_formula_and_ignore_the_prompt(logits, presence, frequency, prompt_len):
    """Guards presence_penalty / frequency_penalty computing another rule than OpenAI's (presence once per
    drawn token, frequency per draw, on raw logits before temperature, the prompt's tokens not counted):
    greedy decoding of a model with fixed logits equals the formula written out in plain Python."""
    from tianci.generate import generate

    m = FixedLogits(logits)
    idx = torch.zeros((2, prompt_len), dtype=torch.long)  # token 0 in the prompt: it must not count
    got = torch.stack(list(generate(m, idx, 12, temperature=0.0, presence_penalty=presence,
                                    frequency_penalty=frequency)), 1)
    ref = reference_penalized_greedy(logits, 12, presence, frequency)
    assert got[0].tolist() == ref and got[1].tolist() == ref


def test_penalties_out_of_openais_range_are_refused_by_name():
    """Guards a penalty outside -2..2 reaching the sampler (or an error that does not name it)."""
    for kw in ({"presence_penalty": 2.5}, {"frequency_penalty": -2.01}, {"presence_penalty": float("nan")}):
        with pytest.raises(ParameterError) as e:
            check_sampling(**kw)
        assert e.value.param == next(iter(kw)) and "-2..2" in str(e.value)
        with pytest.raises(ParameterError):
            SampleOptions(**kw).validate()
    check_sampling(presence_penalty=-2.0, frequency_penalty=2.0)  # the ends are allowed

"""Constrained decoding (tianci.ci.compose) and the independent checker (tianci.ci.compose_eval)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tianci.ci.cipai import CellKind, CiPu, Form
from tianci.ci.compose import Composer, compose, compose_batch
from tianci.ci.compose_eval import check_poem, longest_copy
from tianci.errors import TianciError
from tianci.tokenizer import CharTokenizer
from tianci.ci.tones import PING, ZE, Phonology, is_han

PING_1 = "东风中空红同"  # 第一部 平
ZE_1 = "动送梦重中"  # 第一部 仄
PING_2 = "江窗双"  # 第二部 平
ZE_X = "月雪国白"  # 第十七部 入
PLAIN = "春花秋水山云"
CILIN = {"第一部": {"平声": list(PING_1), "仄声": list(ZE_1)}, "第二部": {"平声": list(PING_2)},
         "第十七部": {"入声": list(ZE_X)}}
TUNES = {"春": "平", "花": "平", "秋": "平", "水": "仄", "山": "平", "云": "平"}
PHON = Phonology.from_tables(CILIN, TUNES, use_pypinyin=False)
ALL_HAN = sorted(set(PING_1 + ZE_1 + PING_2 + ZE_X + PLAIN))


class TinyLM(nn.Module):
    """Stand-in GPT honouring the model contract: forward(idx, targets=None, kv_cache=None)."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, idx, targets=None, kv_cache=None):
        return self.head(self.emb(idx)), None


def tok_of(chars) -> CharTokenizer:
    return CharTokenizer(sorted(set(chars) | set("，、。\n 某")))


def make_form(lines, tones, rhyme, name="测试") -> Form:
    return Form(name, name, "词谱", 0, 1, tuple(lines), tones, tuple(rhyme))


FORM = make_form(["*****，***。", "****。"], "中仄中平平仄平平中平平平", [-1] * 7 + [0] + [-1] * 3 + [0])


def test_exact_form_and_rhyme():
    """Guards: a tiny random model breaking the form, tone or rhyme when unconstrained."""
    tok = tok_of(ALL_HAN)
    for seed in range(5):
        r = compose(TinyLM(tok.vocab_size, seed), tok, FORM, phon=PHON, seed=seed, author="某")
        c = check_poem(r.text, FORM, PHON)
        assert c.form_ok, c.problem
        assert c.tone_hits == c.tone_total and c.rhyme_hits == c.rhyme_total and not r.backoffs
        assert r.rhyme[0] in ("第一部", "第二部") and r.lines == r.text.split("\n")


def test_model_writes_author():
    """Guards: the author phase running away or leaking into the poem."""
    tok = tok_of(ALL_HAN)
    r = compose(TinyLM(tok.vocab_size), tok, FORM, phon=PHON, seed=3)
    assert 1 <= len(r.author) <= 4 and all(is_han(c) for c in r.author)
    assert check_poem(r.text, FORM, PHON).form_ok


def test_batch_rows_independent():
    """Guards: rhyme state shared between the rows of a batch."""
    tok = tok_of(ALL_HAN)
    rs = compose_batch(TinyLM(tok.vocab_size), tok, FORM, 6, phon=PHON, seed=1, temperature=2.0)
    assert len(rs) == 6 and all(check_poem(r.text, FORM, PHON).rhyme_hits == 2 for r in rs)


def test_start_and_acrostic():
    """Guards: --start/--acrostic ignored, or a conflict passing silently."""
    tok = tok_of(ALL_HAN)
    m = TinyLM(tok.vocab_size)
    r = compose(m, tok, FORM, phon=PHON, seed=0, start="春水", acrostic="春东", author="某")
    assert r.text.startswith("春水") and r.lines[1][0] == "东"
    with pytest.raises(TianciError, match=r"'春'.*line 1 character 2.*仄"):
        compose(m, tok, FORM, phon=PHON, start="山春")
    with pytest.raises(TianciError, match="has 4 characters but the form has 2 lines \\(3 clauses\\)"):
        compose(m, tok, FORM, phon=PHON, acrostic="春夏秋冬")
    with pytest.raises(TianciError, match="not in the model's vocabulary"):
        compose(m, tok, FORM, phon=PHON, acrostic="春夏")
    with pytest.raises(TianciError, match="conflicts with start"):
        compose(m, tok, FORM, phon=PHON, start="春", acrostic="秋东")
    with pytest.raises(TianciError, match="cannot rhyme at line 1 character 8"):  # 春 has no 部
        compose(m, tok, FORM, phon=PHON, start="东动东东东动东春")


def test_backoff_on_tiny_vocab():
    """Guards: a hang or crash when no token satisfies the slot (vocab without 仄 or rhymes)."""
    tok = tok_of("春花")
    r = compose(TinyLM(tok.vocab_size), tok, FORM, phon=PHON, seed=0, author="某")
    assert check_poem(r.text, FORM, PHON).form_ok
    assert r.backoffs and {b.relaxed for b in r.backoffs} <= {"tone", "rhyme", "tone+rhyme", "repeat rhyme"}


def test_bpe_rejected():
    """Guards: compose silently mangling the form with a multi-character tokenizer."""
    class FakeBPE:
        kind, vocab_size = "bpe", 10

    with pytest.raises(TianciError, match="character-level tokenizer"):
        compose(TinyLM(10), FakeBPE(), FORM, phon=PHON)


def test_unknown_cipai_suggests(tmp_path):
    """Guards: compose with a misspelt 词牌 failing without the closest names."""
    import json

    (tmp_path / "ci_index.json").write_text(json.dumps([{"idx": 0, "names": ["浣溪沙"], "pinyins": []}]),
                                            "utf-8")
    tok = tok_of(ALL_HAN)
    with pytest.raises(TianciError, match="浣溪沙") as e:
        compose(TinyLM(tok.vocab_size), tok, "浣溪纱", cipu=CiPu.load(tmp_path, phon=PHON), phon=PHON)
    assert e.value.suggestions == ["浣溪沙"]


def test_checker_catches_broken_text():
    """Guards: the independent checker accepting a wrong form (it must not trust the decoder)."""
    assert check_poem("东风中空红，同动送。\n东风中空。", FORM, PHON).form_ok
    assert not check_poem("东风中空，同动送。\n东风中空。", FORM, PHON).form_ok  # 4 chars, not 5
    assert not check_poem("东风中空红。同动送。\n春花秋东。", FORM, PHON).form_ok  # 。 at a pause
    c = check_poem("东风中空红，同动江。\n春花秋东。", FORM, PHON)
    assert c.form_ok and c.rhyme_hits == 1 and c.rhyme_total == 2


def test_longest_copy():
    """Guards: novelty measuring the wrong thing."""
    assert longest_copy("春江潮水连海平", "xx江潮水连yy") == 4 and longest_copy("abc", "xyz") == 0


@st.composite
def forms(draw):
    n_lines = draw(st.integers(1, 4))
    lines = []
    for _ in range(n_lines):
        parts = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
        marks = [draw(st.sampled_from("，、")) for _ in parts[:-1]] + ["。"]
        lines.append("".join("*" * k + m for k, m in zip(parts, marks)))
    n = sum(s.count("*") for s in lines)
    tones = "".join(draw(st.lists(st.sampled_from("平仄中"), min_size=n, max_size=n)))
    rhyme = draw(st.lists(st.sampled_from([-1, -1, 0, 1]), min_size=n, max_size=n))
    return make_form(lines, tones, rhyme)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=forms(), chars=st.sets(st.sampled_from(ALL_HAN), min_size=1, max_size=12),
       seed=st.integers(0, 2**16))
def test_masks_never_admit_illegal_tokens(form, chars, seed):
    """Guards: a mask admitting a token that breaks the slot (wrong tone, non-Han, wrong mark) and
    compose losing the exact form on random patterns, vocabularies and models."""
    tok = tok_of(chars)
    fm = Composer(tok, PHON).masks(form)
    for j, cell in enumerate(fm.cells):
        for i in fm.strict[j].nonzero().flatten().tolist():
            t = tok.token_text(i)
            if cell.is_char:
                assert is_han(t) and PHON.fits(t, form.tones[cell.slot])
                if form.rhyme[cell.slot] >= 0:
                    assert PHON.groups(t, form.tones[cell.slot])
            else:
                assert t in ("\n" if cell.kind is CellKind.NEWLINE else "，、" if cell.mark != "。" else "。")
    rs = compose_batch(TinyLM(tok.vocab_size, seed % 7), tok, form, 2, phon=PHON, seed=seed, author="某")
    for r in rs:
        c = check_poem(r.text, form, PHON)
        assert c.form_ok, c.problem
        relaxed = {(b.line, b.char) for b in r.backoffs}
        k = 0
        for li, line in enumerate(r.lines, 1):
            for ci, ch in enumerate(x for x in line if is_han(x)):
                tone = form.tones[k]
                if (li, ci + 1) not in relaxed and tone in (PING, ZE):
                    assert PHON.fits(ch, tone)
                k += 1


def test_real_pattern_with_gpt(cipu_dir, rhyme_dir):
    """Guards: the real 浣溪沙 pattern not coming out exactly from a random tianci GPT (KV cache path)."""
    from tianci.config import GPTConfig
    from tianci.model import GPT

    phon = Phonology.load(rhyme_dir)
    cp = CiPu.load(cipu_dir, phon=phon)
    vocab = sorted(set("".join(c for c in phon.readings if len(c) == 1 and is_han(c))))[:3000]
    tok = tok_of(vocab + list("浣溪沙"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=128))
    for name in ("浣溪沙", "菩萨蛮", "如梦令"):
        r = compose(model, tok, name, cipu=cp, phon=phon, seed=0)
        c = check_poem(r.text, r.form, phon)
        assert c.form_ok and c.tone_hits == c.tone_total and c.rhyme_hits == c.rhyme_total, r.text
    chars = [ch for ch in r.text if is_han(ch)]  # 如梦令: "……如梦。如梦。……": the 叠 repeats character 25
    assert r.form.repeat_of(26) == 24 and chars[26] == chars[24], r.text


def test_die_marks_parse_and_repeat():
    """Guards 叠 (repeat) marks of the 词谱 being ignored: a slot marked 叠 must repeat the rhyme
    character before it (解佩令's 春晴也好。春阴也好。); misaligned marks are dropped, not guessed."""
    from tianci.ci.form import _repeats

    rhyme = [-1, 0, -1, 0]
    assert _repeats(["中仄韵", "中仄叠"], rhyme) == (-1, -1, -1, 1)
    assert _repeats(["中仄韵", "中叠"], rhyme) == ()  # 3 tone marks for 4 characters
    assert _repeats(["中仄韵", "中仄韵"], rhyme) == ()
    from tianci.ci.cipai import render
    tok = tok_of(ALL_HAN)
    form = Form("叠测", "叠测", "词谱", 0, 1, ("**。", "**。"), "中仄中仄", (-1, 0, -1, 0), repeat=(-1, -1, -1, 1))
    assert render(form).splitlines() == ["◐●A。", "◐●A叠。"]
    for seed in range(6):
        r = compose(TinyLM(tok.vocab_size, seed), tok, form, phon=PHON, seed=seed, temperature=2.0)
        a, b = r.text.split("\n")[:2]
        assert a[1] == b[1], r.text
        assert check_poem(r.text, form, PHON).form_ok


def test_die_repeats_the_whole_phrase_when_the_example_does():
    """Guards 如梦令's 如梦。如梦。 coming out as 不与。一与。: when the 词谱's example repeats the whole
    clause a 叠 ends, every character of it repeats (a 中 slot takes its partner's tone, so the
    repeated character fits both); when the example varies the clause, only the rhyme repeats."""
    from tianci.ci.form import parse_variant

    v = {"ge_lyu_str": "中仄中仄平仄", "ge_lyu_sep": ["中仄韵", "中仄叠", "平仄韵"], "rhyme_pos": [1, 3, 5],
         "yun_classify": {"0": [1, 3, 5]}, "ci_sep": ["如梦", "如梦", "残月"], "origin": "如梦。如梦。残月。"}
    full = parse_variant(v, "test")
    assert full.repeat == (-1, -1, 0, 1, -1, -1)
    part = parse_variant(dict(v, origin="春晴。春阴。残月。"), "test")
    assert part.repeat == (-1, -1, -1, 1, -1, -1)
    clash = parse_variant(dict(v, ge_lyu_str="平仄仄仄平仄"), "test")  # 平 vs 仄: the phrase cannot repeat
    assert clash.repeat == (-1, -1, -1, 1, -1, -1)
    form = Form("如梦测", "如梦测", "词谱", 0, 1, full.lines, full.tones, full.rhyme, repeat=full.repeat)
    tok = tok_of(ALL_HAN)
    for seed in range(6):
        r = compose(TinyLM(tok.vocab_size, seed), tok, form, phon=PHON, seed=seed, temperature=2.0, author="某")
        assert r.lines[0] == r.lines[1], r.text
        c = check_poem(r.text, form, PHON)
        assert c.form_ok and c.tone_hits == c.tone_total and c.rhyme_hits == c.rhyme_total, r.text


# a 词谱 with one tune whose two variants open differently: variant 0 (the default: the first) wants
# 仄 at character 1, variant 1 wants 平 there and 仄 at character 2
V0 = {"ge_lyu_str": "仄平平仄平平仄平", "rhyme_pos": [7], "yun_classify": {"0": [7]}, "ci_sep": ["一二三四　五六七八"],
      "origin": "一二三四，五六七八。"}
V1 = dict(V0, ge_lyu_str="平仄中中中中中平")


@pytest.fixture
def two_variant_cipu(tmp_path):
    from test_cipai import write_cipu

    return CiPu.load(write_cipu(tmp_path, [(["测调"], ["cd"], "cediao", [V0, V1])]), phon=PHON)


def test_start_picks_a_variant_that_admits_it(two_variant_cipu):
    """Guards `compose --cipai 水调歌头 --start 明月` failing because the default variant has 仄 where
    苏轼 wrote 明: with no variant asked for, the first variant that admits the start is used and
    the result says which and why."""
    tok = tok_of(ALL_HAN)
    m = TinyLM(tok.vocab_size)
    r = compose(m, tok, "测调", cipu=two_variant_cipu, phon=PHON, seed=0, start="东", author="某")
    assert r.form.variant == 1 and r.text.startswith("东")
    assert "variant 1" in r.note and "variant 0" in r.note and "must be 仄" in r.note
    plain = compose(m, tok, "测调", cipu=two_variant_cipu, phon=PHON, seed=0, start="动", author="某")
    assert plain.form.variant == 0 and plain.note == ""
    acro = compose(m, tok, "测调", cipu=two_variant_cipu, phon=PHON, seed=0, acrostic="东", author="某")
    assert acro.form.variant == 1 and acro.text.startswith("东")


def test_start_no_variant_admits_names_each(two_variant_cipu):
    """Guards an opening no variant admits failing with only the default's complaint: the error
    names every variant and the slot that refuses, carries param 'start', and an explicit variant
    that refuses names the variants that would admit it."""
    from tianci.ci.fixed import FixedCharsError

    tok = tok_of(ALL_HAN)
    m = TinyLM(tok.vocab_size)
    with pytest.raises(FixedCharsError) as e:
        compose(m, tok, "测调", cipu=two_variant_cipu, phon=PHON, start="东东")
    msg = str(e.value)
    assert e.value.param == "start" and e.value.status == 400
    assert "variant 0: '东' (平) at line 1 character 1, which must be 仄" in msg
    assert "variant 1: '东' (平) at line 1 character 2, which must be 仄" in msg
    with pytest.raises(FixedCharsError) as e:
        compose(m, tok, "测调", cipu=two_variant_cipu, phon=PHON, start="东", variant=0)
    assert e.value.param == "start" and "variant(s) 1 admit it" in str(e.value)
    assert "--variant" in e.value.hints["cli"] and "--" not in str(e.value)
    with pytest.raises(FixedCharsError) as e:
        compose(m, tok, "测调", cipu=two_variant_cipu, phon=PHON, acrostic="东东东")
    assert e.value.param == "acrostic" and e.value.allowed == "1 or 2 characters"


def test_errors_are_typed_and_free_of_flag_syntax(two_variant_cipu):
    """Guards library errors phrased for the CLI (`--variant`, `--start`) that the server had to
    un-phrase and regex-parse: each names its parameter in `param`, its range in `allowed`, and the
    message has no flag syntax."""
    from tianci.ci.cipai import UnknownCipaiError
    from tianci.errors import NotFoundError, ParameterError

    tok = tok_of(ALL_HAN)
    m = TinyLM(tok.vocab_size)
    cases = {"variant": dict(variant=5), "start": dict(start="东东东东东东东东东"), "acrostic": dict(acrostic="秋秋秋"),
             "cipai": dict(cipai="测掉")}
    for param, kw in cases.items():
        with pytest.raises(TianciError) as e:
            compose(m, tok, kw.pop("cipai", "测调"), cipu=two_variant_cipu, phon=PHON, **kw)
        assert e.value.param == param and e.value.allowed and "--" not in str(e.value), (param, str(e.value))
    with pytest.raises(ParameterError) as e:
        two_variant_cipu.form("测调", 5)
    assert e.value.allowed == "0..1" and "--variant" in e.value.render("cli") and "variant" in e.value.hints["api"]
    with pytest.raises(UnknownCipaiError) as e:
        two_variant_cipu.form("测掉")
    assert isinstance(e.value, NotFoundError) and e.value.status == 404 and e.value.suggestions == ["测调"]


def test_composer_reuses_its_tables():
    """Guards the vocabulary tables and masks being rebuilt per call (or cached in a module dict
    keyed by id(), which a new object at a freed address could hit): the caller's Composer owns them."""
    tok = tok_of(ALL_HAN)
    c = Composer(tok, PHON)
    assert c.masks(FORM) is c.masks(FORM)
    other = Composer(tok, PHON)
    assert other.masks(FORM) is not c.masks(FORM)
    r = compose(TinyLM(tok.vocab_size), tok, FORM, seed=0, author="某", composer=c)
    assert check_poem(r.text, FORM, PHON).form_ok and len(c._masks) == 1


def corpus_of(texts):
    from tianci.ci.corpus_stats import CorpusPoem, CorpusStats

    return CorpusStats.from_poems([CorpusPoem("测试", "某", [t]) for t in texts])


class Fav(nn.Module):
    """A model that always prefers one token (the rest uniform): what it writes where it may is known."""

    def __init__(self, vocab: int, fav: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.bias[fav] = 10.0

    def forward(self, idx, targets=None, kv_cache=None):
        return self.bias.expand(*idx.shape, -1), None


def test_clause_does_not_end_on_a_word_real_ci_never_ends_one_with():
    """Guards broken clauses (秋水不，): the decoder forcing a pause right after a character real ci
    almost never ends a clause with. With the craft rule the favourite 山 (never clause-final in the
    corpus) stays inside clauses; without it, it ends one; the form stays exact either way."""
    from tianci.ci.judge import Judge

    tok = tok_of(ALL_HAN)
    judge = Judge.from_corpus(corpus_of(["山春花，山秋水。"] * 60), order=2)
    assert "山" in judge.ends.rare
    model = Fav(tok.vocab_size, tok.encode("山")[0])
    for clause_ends, want in ((False, True), (True, False)):
        r = compose(model, tok, FORM, author="某", seed=0, composer=Composer(tok, PHON, judge=judge, clause_ends=clause_ends))
        assert check_poem(r.text, FORM, PHON).form_ok
        assert ("山，" in r.text) is want, r.text


def test_candidates_keep_the_judges_best_draft():
    """Guards reranking returning a draft other than the judge's best (or decoding the drafts
    differently from plain sampling): the poem is the lowest-scoring of the M drafts that the same
    seed draws without reranking."""
    from tianci.ci.judge import Judge

    tok = tok_of(ALL_HAN)
    judge = Judge.from_corpus(corpus_of(["东风红，春水动。", "秋山空，花月重。"] * 30), order=3)
    c = Composer(tok, PHON, judge=judge, clause_ends=False)
    m = TinyLM(tok.vocab_size, 3)
    drafts = compose_batch(m, tok, FORM, 5, seed=7, temperature=1.5, author="某", composer=c)
    scores = judge.scores([d.text for d in drafts], FORM.rhyme, FORM.repeat)
    seen = []
    best = compose(m, tok, FORM, seed=7, temperature=1.5, author="某", composer=c, candidates=5,
                   on_text=seen.append)
    assert best.text == drafts[scores.index(min(scores))].text and seen == [best.text + "\n"]
    with pytest.raises(TianciError) as e:
        compose(m, tok, FORM, candidates=2, phon=PHON)
    assert e.value.param == "candidates"


def test_a_themed_poem_is_the_best_of_theme_candidates_drafts_by_default():
    """Guards the themed default (85% -> 94% of the words measured): with a judge at hand and no
    number asked for, a themed poem is the best of THEME_CANDIDATES drafts, exactly what asking for
    that number gives; an untheme'd poem, or a composer without a judge, stays one draft; a number
    asked for wins."""
    from tianci.ci.judge import Judge
    from tianci.sampling import THEME_CANDIDATES

    tok = tok_of(ALL_HAN)
    judge = Judge.from_corpus(corpus_of(["东风红，春水动。", "秋山空，花月重。"] * 30), order=3)
    c = Composer(tok, PHON, judge=judge, clause_ends=False)
    m = TinyLM(tok.vocab_size, 3)
    kw = dict(seed=7, temperature=1.5, author="某", composer=c)
    texts = {n: compose(m, tok, FORM, theme="春花", candidates=n, **kw).text for n in (1, THEME_CANDIDATES)}
    assert texts[1] != texts[THEME_CANDIDATES]  # the seed tells the two apart, so the checks below can
    assert compose(m, tok, FORM, theme="春花", **kw).text == texts[THEME_CANDIDATES]
    assert compose(m, tok, FORM, **kw).text == compose(m, tok, FORM, candidates=1, **kw).text
    bare = Composer(tok, PHON, clause_ends=False)
    kw["composer"] = bare
    assert compose(m, tok, FORM, theme="春花", **kw).text == compose(m, tok, FORM, theme="春花", candidates=1, **kw).text


def test_theme_favours_its_characters_within_the_form():
    """Guards a theme (`--theme`, the server's `theme`, chat's 主题) that is accepted but changes
    nothing, or that places its characters at the cost of the form, and one the vocabulary cannot
    write being silently ignored."""
    from tianci.errors import ParameterError

    tok = tok_of(ALL_HAN)
    theme = "春花秋"  # 平 characters: the form has several 平 and 中 slots for them
    plain = themed = 0
    for seed in range(6):
        m = TinyLM(tok.vocab_size, seed)
        a = compose(m, tok, FORM, phon=PHON, seed=seed, author="某")
        b = compose(m, tok, FORM, phon=PHON, seed=seed, author="某", theme=theme)
        c = check_poem(b.text, FORM, PHON)
        assert c.form_ok and c.tone_hits == c.tone_total and c.rhyme_hits == c.rhyme_total, b.text
        plain += sum(ch in theme for ch in a.text)
        themed += sum(ch in theme for ch in b.text)
    assert themed > 2 * max(plain, 1), (plain, themed)
    with pytest.raises(ParameterError) as e:
        compose(TinyLM(tok.vocab_size), tok, FORM, phon=PHON, theme="xyz")
    assert e.value.param == "theme"


def test_a_critic_makes_every_poem_the_best_of_critic_candidates_drafts():
    """Guards the critic's default (docs/compose.md §9): with a judge that holds the run's critic and no
    number asked for, any poem, themed or not, is the best of CRITIC_CANDIDATES drafts by judge plus
    critic, exactly what asking for that number gives; without the critic it stays one draft."""
    pytest.importorskip("sklearn")
    from tianci.ci.critic import Critic
    from tianci.ci.judge import Judge
    from tianci.sampling import CRITIC_CANDIDATES

    tok = tok_of(ALL_HAN)
    texts = ["东风红，春水动。", "秋山空，花月重。"] * 30
    plain = Judge.from_corpus(corpus_of(texts), order=3)
    rng = random.Random(0)
    drafts = ["".join(rng.choice(ALL_HAN) for _ in range(5)) + "，" + "".join(rng.choice(ALL_HAN) for _ in range(3))
              + "。" for _ in range(60)]
    judge = Judge(plain.lm, plain.ends, critic=Critic.fit(drafts, texts))
    m = TinyLM(tok.vocab_size, 3)
    kw = dict(seed=7, temperature=1.5, author="某")
    c = Composer(tok, PHON, judge=judge, clause_ends=False)
    best = compose(m, tok, FORM, candidates=CRITIC_CANDIDATES, composer=c, **kw).text
    assert best != compose(m, tok, FORM, candidates=1, composer=c, **kw).text  # the seed tells them apart
    assert compose(m, tok, FORM, composer=c, **kw).text == best
    assert compose(m, tok, FORM, composer=c, theme="春花", **kw).text == compose(
        m, tok, FORM, composer=c, theme="春花", candidates=CRITIC_CANDIDATES, **kw).text
    no_critic = Composer(tok, PHON, judge=plain, clause_ends=False)
    assert compose(m, tok, FORM, composer=no_critic, **kw).text == compose(
        m, tok, FORM, composer=no_critic, candidates=1, **kw).text

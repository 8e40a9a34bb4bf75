"""The form-aware model (GPTConfig.form="clause", tianci.formpos): the training-time ids against a slow
reference, the composer's ids against what training reads off the composed poem, every decoding path,
and a form model end to end (train, compose, sample, export refused)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tianci import formpos as F
from tianci.config import GPTConfig
from tianci.generate import generate
from tianci.model import GPT
from tianci.tokenizer import CharTokenizer

# hand-written: two ci (one with a 、 and a clause longer than REM_CAP), a themed title, a 诗 with its
# genre tag, a paragraph without a final mark, ？ and ； inside a line
POEMS = ("\n\n浣溪沙 晏殊\n一曲新词酒一杯，去年天气旧亭台。\n夕阳、西下几时回。\n\n"
         "念奴娇〈赤壁〉 苏轼\n大江东去浪淘尽千古风流人物故垒西边人道是三国周郎赤壁，乱石穿空。\n惊涛拍岸？卷起千堆雪；江山如画\n\n"
         "【诗】静夜思 李白\n床前明月光，疑是地上霜。\n\n")


def slow_ids(text: str, t: int) -> tuple[int, int]:
    """The definition, written as a loop over characters: (remaining, end) at position t, about text[t+1]."""
    n = 0
    for ch in text[t + 1:]:
        c = F.char_class(ch)
        if c == F.SLOT:
            n += 1
        elif c == F.NEWLINE:  # the paragraph break right after a mark; otherwise no clause (a title line)
            return (0, F.NEWLINE) if n == 0 and F.char_class(text[t]) in (F.PAUSE, F.STOP) else (F.REM_UNKNOWN, 0)
        else:
            return min(n, F.REM_CAP), c
    return F.REM_UNKNOWN, F.UNKNOWN  # the clause is still open where the window ends


def tok_of(text: str) -> CharTokenizer:
    return CharTokenizer(sorted(set(text)))


def test_training_ids_match_a_slow_reference_on_every_window():
    """Guards: the vectorised reading (reverse cummin, cumsum, gather) disagreeing with the definition
    anywhere: windows starting mid-title or mid-clause, clauses open at the window's end, capped counts."""
    tok = tok_of(POEMS)
    ids, cls = torch.tensor(tok.encode(POEMS)), F.token_classes(tok)
    for L in (2, 9, 33, len(ids)):
        starts = torch.arange(len(ids) - L + 1)
        windows = ids[starts[:, None] + torch.arange(L)]  # (every offset, L)
        got = F.from_tokens(windows, cls)
        for s in range(len(starts)):
            text = POEMS[s:s + L]
            want = [slow_ids(text, t) for t in range(L - 1)]
            assert [tuple(x) for x in got[s].tolist()] == want, (L, s, text)


def test_training_ids_by_hand():
    """Guards: the meaning of the ids drifting (counting the token itself, the title line, the newline)."""
    text = "\n\n浣溪沙 晏殊\n春风，花。\n\n"
    got = F.from_tokens(torch.tensor([tok_of(text).encode(text)]), F.token_classes(tok_of(text)))[0].tolist()
    U = [F.REM_UNKNOWN, F.UNKNOWN]
    assert got == [U] * 8 + [[2, F.PAUSE], [1, F.PAUSE], [0, F.PAUSE], [1, F.STOP], [0, F.STOP],
                             [0, F.NEWLINE], U]


def test_ignored_targets_and_bpe():
    """Guards: an IGNORE_INDEX target indexing the class table; a BPE run getting a form it cannot have."""
    tok = tok_of(POEMS)
    x = torch.tensor([tok.encode("一曲新词，酒。")])
    y = torch.cat([x[:, 1:], torch.full((1, 1), -100)], dim=1)
    assert F.for_training(x, y, F.token_classes(tok), training=False).shape == (1, 7, 2)

    class BPE:
        kind = "bpe"

    from tianci.errors import ParameterError
    with pytest.raises(ParameterError, match="form"):
        F.token_classes(BPE())


def form_gpt(tok, block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16,
                      form="clause", pos="rope", norm="rmsnorm"))
    F.attach(m, tok)
    for e in (m.form_rem, m.form_end):  # large enough that a wrong id changes the greedy path
        torch.nn.init.normal_(e.weight, 0.0, 1.0)
    return m.eval()


def test_the_form_changes_the_model_and_every_decoding_path_agrees():
    """Guards: the form ids not reaching the model, or reaching it at the wrong position in one path
    (no cache, KV cache, the cache refilled past the context length)."""
    tok = tok_of(POEMS)
    m = form_gpt(tok, block_size=8)
    x = torch.tensor([tok.encode("一曲新词酒一杯，去")])
    y = x[:, 1:]
    x = x[:, :-1]
    with torch.no_grad():
        with_form, _ = m(x, form=F.for_training(x, y, m.form_classes, False))
        plain, _ = m(x)
    assert not torch.allclose(with_form, plain)
    with torch.no_grad():
        _, loss_own = m(x, y)  # eval mode: the text's own form, no row dropped
        _, loss_given = m(x, y, form=F.for_training(x, y, m.form_classes, False))
    assert torch.equal(loss_own, loss_given)

    layout = F.from_layout("*****，***。\n***，****。\n")

    def run(use_cache):
        pos = [0, 0]
        prompt = torch.tensor([tok.encode("\n\n浣溪沙 晏殊\n")] * 2)

        def hook(step):
            ids = layout[[min(p, len(layout) - 1) for p in pos]]
            return ids

        out = []
        for tok_ in generate(m, prompt, 22, temperature=0, form_hook=hook, use_cache=use_cache):
            out.append(tok_.tolist())
            pos[0] += 1
            pos[1] += 1
        return out

    assert run(True) == run(False)


def test_compose_feeds_what_training_reads_off_the_poem():
    """Guards: the composer's ids (from the pattern) differing from the ids training computes from the
    composed poem's own text, at any step: the prompt, the author the model writes, each cell, and past
    the context length where the KV cache is refilled."""
    from tianci.ci.compose import compose_batch
    from test_compose import ALL_HAN, FORM, PHON

    tok = CharTokenizer(sorted(set(ALL_HAN) | set("，、。\n 某测试")))
    for author, n in ((None, 1), ("某", 3)):
        m = form_gpt(tok, block_size=8)
        calls = []
        forward = m.forward

        def record(idx, *a, form=None, **kw):
            calls.append((idx.clone(), form.clone()))
            return forward(idx, *a, form=form, **kw)

        m.forward = record
        res = compose_batch(m, tok, FORM, n, phon=PHON, seed=1, author=author)
        fed = torch.cat([calls[0][0]] + [c[0][:, -1:] for c in calls[1:]], dim=1)  # every token fed, in order
        for r, poem in enumerate(res):
            text = "\n\n" + FORM.title + " " + poem.author + "\n" + poem.text + "\n"
            ids = torch.tensor([tok.encode(text)])
            assert fed[r].tolist() == ids[0, :-1].tolist()
            reread = F.from_tokens(ids, m.form_classes)[0]  # what training reads off the poem
            end = calls[0][0].size(1)
            assert torch.equal(calls[0][1][r], reread[:end])
            for idx, form in calls[1:]:
                end += 1
                assert torch.equal(form[r], reread[end - form.size(1):end])


def test_the_batched_engine_feeds_the_form_as_generate_does():
    """Guards: the server's engine (continuous batching) composing with a form model but without its form
    (or at the wrong position: prefill, batched decode step, the refill past the context length)."""
    from tianci.ci.compose import compose
    from tianci.engine import Engine
    from test_compose import FORM, PHON

    tok = CharTokenizer(sorted(set("".join(PHON.readings)) | set("，、。\n 某测试")))
    m = form_gpt(tok, block_size=8)
    seeds = (0, 1, 4)
    alone = [compose(m, tok, FORM, phon=PHON, seed=s, temperature=1.0).text for s in seeds]
    engine = Engine(m, 4)
    from tianci.batched import stream
    other = stream(engine, tok, "\n\n测试 ", 1)  # a plain row (no form) in the same batches
    next(other, None)
    assert [compose(m, tok, FORM, phon=PHON, seed=s, temperature=1.0, engine=engine).text for s in seeds] == alone
    other.close()
    plain = Engine(Plain(m), 4)
    unformed = [compose(m, tok, FORM, phon=PHON, seed=s, temperature=1.0, engine=plain).text for s in seeds]
    assert unformed != alone  # the form does change what this model writes


class Plain(torch.nn.Module):
    """The same weights told no form (a config without the switch): what an engine that forgot it writes."""

    def __init__(self, m):
        super().__init__()
        self.m, self.config = m, dataclasses.replace(m.config, form="none")

    def forward(self, *a, **kw):
        return self.m(*a, **kw)

    def decode_step(self, *a):
        return self.m.decode_step(*a)

    def new_kv_cache(self, *a, **kw):
        return self.m.new_kv_cache(*a, **kw)


def test_compiled_step_takes_the_form():
    """Guards: the compiled fixed-shape decoding step dropping the form ids (or recompiling per call)."""
    pytest.importorskip("torch._inductor")
    from tianci.decode import CompiledDecoder

    tok = tok_of(POEMS)
    m = form_gpt(tok, block_size=16)
    step = CompiledDecoder(m).step(2)
    if step is None:
        pytest.skip("torch.compile is unavailable here")
    prompt = torch.tensor([tok.encode("\n一曲")] * 2)
    form = F.from_layout("***，**。\n")[[1, 4]][:, None]  # two rows, two different places
    with torch.no_grad():
        m(prompt, kv_cache=step.cache, form=F.unknown(2, prompt.size(1)))
        got = step(torch.tensor([[5], [7]]), form)
        ref_cache = m.new_kv_cache(2)
        m(prompt, kv_cache=ref_cache, form=F.unknown(2, prompt.size(1)))
        want, _ = m(torch.tensor([[5], [7]]), kv_cache=ref_cache, form=form)
        plain = step(torch.tensor([[5], [7]]))  # no form given: unknown, the same graph
    torch.testing.assert_close(got, want[:, -1], rtol=1e-4, atol=1e-4)
    assert plain.shape == got.shape


def test_export_refuses_a_form_model():
    """Guards: exporting a model whose form embeddings no outside architecture computes (silently wrong)."""
    from tianci.interop.arch import ExportError, choose

    with pytest.raises(ExportError, match="form='clause'"):
        choose(GPTConfig(pos="rope", norm="rmsnorm", form="clause", vocab_size=10))


def test_a_form_model_trains_composes_and_samples(tiny_data, tmp_path, cipu_dir, rhyme_dir):
    """Guards: the switch not surviving a run (config, token classes at load), or a form run that
    trains but cannot compose or plainly sample."""
    from tianci import checkpoint as ck
    from tianci.ci.cipai import CiPu
    from tianci.ci.compose import compose
    from tianci.ci.compose_eval import check_poem
    from tianci.config import load_preset
    from tianci.generate import SampleOptions, complete
    from tianci.train import train

    preset = load_preset("ci-cpu")
    preset.model.form = "clause"
    preset.model.block_size, preset.model.n_layer = 32, 1
    tc = preset.train
    tc.max_iters, tc.max_time, tc.eval_interval, tc.eval_iters, tc.batch_size = 30, 0, 30, 2, 4
    tc.device, tc.progress, tc.dtype = "cpu", False, "float32"
    out = train(preset, tiny_data, tmp_path / "run", quiet=True)
    assert out["step"] == 30 and out["val_loss"] < 5
    run = ck.load_run(tmp_path / "run")
    assert run.preset.model.form == "clause"
    assert torch.equal(run.model.form_classes, F.token_classes(run.tokenizer))
    from tianci.ci.tones import Phonology
    cp = CiPu.load(cipu_dir, phon=Phonology.load(rhyme_dir))
    r = compose(run.model, run.tokenizer, "浣溪沙", cipu=cp, seed=0)
    assert check_poem(r.text, r.form, cp.phon).form_ok
    text = complete(run.model, run.tokenizer, "\n\n浣溪沙 ", 1, SampleOptions(max_new_tokens=40, seed=0))[0].text
    assert len(text) > 0

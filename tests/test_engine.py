"""The batched engine (tianci.engine): continuous batching gives every row the text it gets alone,
the KV cache stays bounded by max_batch, admission is FIFO, and cancellation frees the slot."""

from __future__ import annotations

import threading

import pytest
import torch

from tianci.config import GPTConfig
from tianci.batched import stream
from tianci.engine import Engine, Group
from tianci.generate import SampleOptions, generate
from tianci.generate import stream as generate_stream
from tianci.model import GPT
from tianci.tokenizer import CharTokenizer

from test_compose import ALL_HAN, FORM, PHON, tok_of
from test_generate import CONFIGS, make_model, prompt

TOK = CharTokenizer.from_text("春花秋月何时了往事知多少\n 浣溪沙李煜，。")


def text_model(tok, block_size: int = 24, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                    init_std=0.3, pos="rope", attn_impl="sdpa", **kw)
    return GPT(cfg).eval()


def texts(engine, requests) -> list[str]:
    """Run (prompt, opts) requests on the engine at once (all submitted before the first step)."""
    streams = [stream(engine, TOK, p, 1, o) for p, o in requests]
    out = [""] * len(streams)
    pending = [iter(s) for s in streams]
    # submit every request first: a generator submits on its first next()
    heads = [next(it, None) for it in pending]
    for i, (it, h) in enumerate(zip(pending, heads)):
        if h is not None:
            out[i] += h.text + "".join(ev.text for ev in it)
    return out


# ----------------------------------------------------------------------------- same text whatever the batch

@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("T,n", [(3, 10), (3, 30), (25, 12)])
def test_greedy_rows_equal_generate_with_others_in_the_batch(name, T, n):
    """Guards the engine computing another function than generate(): per-row positions and masks in
    the shared decode step, a slot's cache view, and rows that reach block_size (re-prefilled from
    their last block_size tokens every step, as generate does; T+n > 16) or start past it (T=25).
    Each row runs with two others of different lengths in the batch."""
    m = make_model(name)
    engine = Engine(m, 3)
    groups = []
    for j, (t, steps) in enumerate([(T, n), (2, 7), (9, 20)]):
        g, toks = Group(engine), []
        g.add(prompt(1, t, seed=1 + j)[0].tolist(), steps, lambda tok, toks=toks: toks.append(tok) or False,
              temperature=0.0)
        groups.append((g, toks, t, steps, j))
    for g, *_ in groups:
        list(g.items())
    for g, toks, t, steps, j in groups:
        ref = torch.stack(list(generate(m, prompt(1, t, seed=1 + j), steps, temperature=0.0)), 1)[0].tolist()
        assert toks == ref, (name, j)


def test_seeded_text_is_the_same_alone_batched_and_at_max_batch_1():
    """Guards a seeded request's text depending on what else is in the batch (a shared generator, a
    row's logits or mask leaking into its neighbour's): the same seed gives the same text alone,
    batched with others (other prompts, temperatures, top-k/top-p, stop strings, lengths, past
    block_size), at --max-batch 1, and as generate.stream gives it today."""
    m = text_model(TOK)
    mine = ("春花", SampleOptions(max_new_tokens=40, temperature=1.0, top_k=8, seed=7))
    others = [("秋月", SampleOptions(max_new_tokens=5, temperature=0.7, seed=1)),
              ("", SampleOptions(max_new_tokens=30, temperature=1.3, top_p=0.9, stop=("了",), seed=2)),
              ("往事知多少", SampleOptions(max_new_tokens=60, temperature=0.0)),
              ("何时", SampleOptions(max_new_tokens=12, temperature=1.0))]
    today = "".join(ev.text for ev in generate_stream(m, TOK, mine[0], 1, mine[1]))
    alone = texts(Engine(m, 4), [mine])[0]
    batched = texts(Engine(m, 4), [others[0], others[1], mine, others[2], others[3]])[2]
    one = texts(Engine(m, 1), [others[1], mine])[1]
    assert len(today) == 40 and alone == batched == one == today


def test_penalized_rows_count_only_their_own_tokens():
    """Guards the engine's repetition penalties (generate.penalize) counting another row's tokens, the
    prompt, or nothing: a seeded row with presence and frequency penalties gets generate.stream's text
    alone, batched with unpenalized rows and with another penalized one, and at max_batch 1 (and the
    penalties do change the text)."""
    m = text_model(TOK)
    mine = ("春花", SampleOptions(max_new_tokens=40, temperature=1.0, seed=7, presence_penalty=0.8,
                                 frequency_penalty=0.5))
    others = [("春花", SampleOptions(max_new_tokens=40, temperature=1.0, seed=7)),
              ("秋月", SampleOptions(max_new_tokens=30, temperature=0.9, seed=2, presence_penalty=-1.0)),
              ("往事", SampleOptions(max_new_tokens=50, temperature=0.0, frequency_penalty=2.0))]
    today = "".join(ev.text for ev in generate_stream(m, TOK, mine[0], 1, mine[1]))
    plain = "".join(ev.text for ev in generate_stream(m, TOK, others[0][0], 1, others[0][1]))
    batched = texts(Engine(m, 4), [others[0], mine, others[1], others[2]])
    one = texts(Engine(m, 1), [others[1], mine])[1]
    assert len(today) == 40 and today != plain
    assert batched[1] == one == today and batched[0] == plain


def test_stop_strings_usage_and_choices_through_the_engine():
    """Guards the text level through the engine (generate.RowState): a stop string ends the row
    without its text, usage counts every token, and choice i of a seeded request is seeded seed+i."""
    m = text_model(TOK)
    engine = Engine(m, 4)
    usage: dict = {}
    evs = list(stream(engine, TOK, "春", 3, SampleOptions(max_new_tokens=20, temperature=1.0, seed=3), usage))
    by = {i: "".join(e.text for e in evs if e.index == i) for i in range(3)}
    assert [e.finish_reason for e in evs if e.finished] and usage["completion_tokens"] == 60
    for i in range(3):
        assert by[i] == "".join(e.text for e in stream(Engine(m, 1), TOK, "春", 1, SampleOptions(
            max_new_tokens=20, temperature=1.0, seed=3 + i)))
    stop = by[0][5]
    cut = list(stream(engine, TOK, "春", 1, SampleOptions(max_new_tokens=20, temperature=1.0, seed=3,
                                                         stop=(stop,))))
    assert "".join(e.text for e in cut) == by[0][:by[0].index(stop)] and cut[-1].finish_reason == "stop"


def test_compose_rows_join_completion_batches_with_the_same_text():
    """Guards 填词 through the engine: the per-row constraint mask (ConstrainedDecoder.row_hook) and
    the decoder's state advanced on the engine's thread give the poem compose() writes alone, also
    when the batch holds completions and another composition."""
    from tianci.ci.compose import Composer, compose
    from tianci.ci.compose_eval import check_poem

    tok = tok_of(ALL_HAN)
    m = text_model(tok, block_size=32)
    composer = Composer(tok, PHON)
    kw = dict(phon=PHON, seed=5, temperature=1.0, composer=composer)
    alone = compose(m, tok, FORM, **kw)
    engine = Engine(m, 4).start()
    try:
        out, streamed = {}, []
        jobs = {"mine": lambda: compose(m, tok, FORM, engine=engine, on_text=streamed.append, **kw),
                "other": lambda: compose(m, tok, FORM, engine=engine, **{**kw, "seed": 9}),
                "text": lambda: list(stream(engine, tok, "春", 2, SampleOptions(max_new_tokens=40, seed=1)))}
        threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, jobs[k]())) for k in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        one = compose(m, tok, FORM, engine=Engine(m, 1), **kw)
    finally:
        engine.close()
    assert out["mine"].text == alone.text == one.text and out["mine"].author == alone.author
    assert "".join(streamed).endswith(alone.text + "\n") and check_poem(alone.text, FORM, PHON).form_ok
    assert engine.stats.peak_active >= 2  # they really shared batches


def test_penalized_compose_is_the_same_through_the_engine():
    """Guards the composer's repetition penalties applied on one decoding path only (generate's or
    the engine's), or after its masks let a forbidden character back: a penalized poem is the same
    alone and through an engine, keeps its form, and is not the unpenalized poem."""
    from tianci.ci.compose import Composer, compose
    from tianci.ci.compose_eval import check_poem

    tok = tok_of(ALL_HAN)
    m = text_model(tok, block_size=32)
    kw = dict(phon=PHON, seed=5, temperature=1.0, composer=Composer(tok, PHON))
    pen = dict(presence_penalty=2.0, frequency_penalty=1.0)
    alone = compose(m, tok, FORM, **kw, **pen)
    via = compose(m, tok, FORM, engine=Engine(m, 2), **kw, **pen)
    plain = compose(m, tok, FORM, **kw)
    assert alone.text == via.text != plain.text and check_poem(alone.text, FORM, PHON).form_ok


# What compose wrote for these seeds before the engine drew rows together and top-p stopped sorting
# (commit aec9ef4): seed s, theme 春花 on odd seeds, top-k 5 on seed 3, temperature 1, top-p 0.95.
PINNED_POEMS = ["空国窗空春、梦中中。\n秋空江空。", "空国空窗中，中空中。\n春花风空。", "花动中空云，中中空。\n空窗中中。",
                "春中梦春花，中中中。\n白中空风。", "中送空窗花、动风风。\n山同云东。", "中中某中花、国中空。\n重春花风。"]


def test_seeded_poems_are_pinned_alone_and_batched():
    """Guards the batched draw (one filter and one sampler call for the rows that sample alike, each
    with its own generator; the sort-free top-p; each row's own theme bias) changing what a seed
    writes: the poems are the ones compose wrote before, alone and as rows of one engine batch."""
    from tianci.ci.compose import Composer, compose

    tok = tok_of(ALL_HAN)
    m = text_model(tok, block_size=32)
    composer = Composer(tok, PHON)
    asks = [dict(seed=s, theme="春花" if s % 2 else None, top_k=5 if s == 3 else None) for s in range(6)]
    kw = dict(phon=PHON, temperature=1.0, composer=composer)
    assert [compose(m, tok, FORM, **kw, **a).text for a in asks] == PINNED_POEMS
    engine = Engine(m, 8).start()
    out = [None] * len(asks)
    try:
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, compose(m, tok, FORM, engine=engine, **kw,
                                                                                  **asks[i]).text))
                   for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.close()
    assert out == PINNED_POEMS and engine.stats.peak_active >= 2


# ----------------------------------------------------------------------------- bounds, order, cancellation

def test_kv_cache_is_allocated_once_and_bounded_by_max_batch(monkeypatch):
    """Guards memory growing with the load: the engine allocates one KV cache of max_batch rows and
    no other (prefills write through slot views), and never holds more than max_batch rows."""
    m = text_model(TOK)
    calls = []
    real = m.new_kv_cache
    monkeypatch.setattr(m, "new_kv_cache", lambda b, *a, **k: calls.append(b) or real(b, *a, **k))
    engine = Engine(m, 3)
    outs = [list(s) for s in [stream(engine, TOK, "春", 2, SampleOptions(max_new_tokens=30, seed=i))
                              for i in range(2)]]
    groups = [stream(engine, TOK, p, 1, SampleOptions(max_new_tokens=40)) for p in ("秋", "花", "月", "何", "时")]
    firsts = [next(g) for g in groups]
    for g in groups:
        list(g)
    assert calls == [3] and engine.cache.k.shape[1] == 3
    assert engine.stats.peak_active == 3 and engine.active() == 0 and firsts and outs


def test_admission_is_first_come_first_served():
    """Guards unfair scheduling: with every slot busy, waiting rows get slots in the order they came."""
    m = text_model(TOK)
    engine = Engine(m, 2)
    order = []
    groups = []
    for i in range(6):
        g = Group(engine)
        # lengths 3, 4, 3, 4, ...: one slot frees at a time, so no two rows start in one step
        g.add([1, 2], 3 + i % 2, lambda tok, i=i: (order.append(i) if i not in order else None) or False)
        groups.append(g)
    for g in groups:
        list(g.items())
    assert order == list(range(6))


def test_a_reader_that_leaves_cancels_its_rows_and_frees_the_slot():
    """Guards a client that went away keeping its slot (and its queued rows starting at all)."""
    m = text_model(TOK)
    engine = Engine(m, 1)
    long = stream(engine, TOK, "春", 2, SampleOptions(max_new_tokens=1000, temperature=1.0))
    next(long)  # row 0 runs, row 1 waits for the only slot
    long.close()
    engine.step()
    assert engine.active() == 0 and not engine.waiting
    rest = list(stream(engine, TOK, "秋", 1, SampleOptions(max_new_tokens=4, seed=1)))
    assert rest[-1].finish_reason == "length" and len("".join(e.text for e in rest)) == 4


def test_a_failing_row_ends_alone_with_its_error():
    """Guards one row's fault (its hook raising) taking the batch down or hanging its reader."""
    m = text_model(TOK)
    engine = Engine(m, 2)
    bad, good, toks = Group(engine), Group(engine), []

    def hook(logits, step):
        if step == 2:
            raise ValueError("mask broke")
        return logits

    bad.add([1], 10, lambda t: False, logits_hook=hook)
    good.add([1], 10, lambda t: toks.append(t) or False, temperature=0.0)
    with pytest.raises(ValueError, match="mask broke"):
        list(bad.items())
    list(good.items())
    assert len(toks) == 10


def test_bad_max_batch_is_a_parameter_error():
    from tianci.errors import ParameterError

    with pytest.raises(ParameterError, match="max_batch"):
        Engine(text_model(TOK), 0)


def test_an_outside_cancel_stops_a_waiting_row_before_it_starts():
    """Guards a server job whose client left while its row still waited for a slot: setting the
    job's flag must end the row unstarted (RowsCancelled to its reader), and never set by the reader."""
    from tianci.engine import RowsCancelled

    m = text_model(TOK)
    engine = Engine(m, 1)
    busy = stream(engine, TOK, "春", 1, SampleOptions(max_new_tokens=50))
    next(busy)  # holds the only slot
    flag, started = threading.Event(), []
    waiting = Group(engine, flag)
    waiting.add([1], 5, lambda t: started.append(t) or False)
    flag.set()
    with pytest.raises(RowsCancelled):
        list(waiting.items())
    assert not started and engine.active() == 1  # ended at once, while the slot was still busy
    assert list(busy)
    done = threading.Event()
    list(stream(engine, TOK, "春", 1, SampleOptions(max_new_tokens=3), cancelled=done))
    assert not done.is_set()  # the reader finishing never sets the job's flag


def test_a_model_without_a_kv_cache_decodes_unbatched_with_the_same_text():
    """Guards the model contract: a stand-in honouring only forward(idx) -> (logits, loss) (no KV
    cache, no decode_step) still decodes in the engine, as generate's no-cache path does."""
    from test_generate import TOK as SCRIPT_TOK, ScriptModel

    m = ScriptModel(SCRIPT_TOK, "春花秋月何时了", 1)
    evs = list(stream(Engine(m, 2), SCRIPT_TOK, "春", 2, SampleOptions(max_new_tokens=7, temperature=0.0)))
    assert ["".join(e.text for e in evs if e.index == i) for i in range(2)] == ["春花秋月何时了"] * 2

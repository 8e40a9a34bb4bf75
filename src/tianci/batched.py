"""Requests as rows of the batched engine (tianci.engine), from the caller's side: one generator per
row (`row_generators`), n rows of one prompt read back in the caller's thread (`run_rows`, which the
composer's rows take too), and `stream`, `generate.stream` through an engine (the server's completions).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import torch

from .engine import Engine, Group
from .generate import Event, RowState, SampleOptions, encode_prompt, stop_strings
from .tokenizer import StreamDecoder


def row_generators(seed: int | None, n: int, device) -> list[torch.Generator]:
    """One generator per row: row i of a seeded request draws from seed + i (row 0 from seed itself,
    as generate does for one row), so a seeded row's text never depends on its neighbours."""
    gens = [torch.Generator(device=device) for _ in range(n)]
    for i, g in enumerate(gens):
        g.manual_seed((seed + i) % 2**63) if seed is not None else g.seed()  # seed(): the global RNG untouched
    return gens


def run_rows(engine: Engine, ids: list[int], n: int, max_new_tokens: int, seed: int | None,
             on_token: Callable[[int, int], tuple[bool, object]], row_hook=None, on_length=None,
             cancelled: threading.Event | None = None, row_form=None, **sampling) -> Iterator:
    """n rows of one prompt through the engine; yields, in this thread, what their tokens produce.

    Row r draws from row_generators(seed, n)[r], under the logits hook row_hook(r) if given, and is
    told its form by row_form(r) if given (a form model's form_hook, tianci.formpos).
    on_token(r, tok) runs on the engine's thread and returns (finished, item or None); on_length(r)
    may return a last item when row r runs out of tokens. Leaving early, or setting `cancelled`,
    cancels the rows (see Group)."""
    group = Group(engine, cancelled)
    for r, gen in enumerate(row_generators(seed, n, engine.device)):
        def push(tok: int, r: int = r) -> bool:
            finished, item = on_token(r, tok)
            if item is not None:
                group.put(item)
            return finished
        group.add(ids, max_new_tokens, push, on_length=None if on_length is None else lambda r=r: on_length(r),
                  generator=gen, logits_hook=None if row_hook is None else row_hook(r),
                  form_hook=None if row_form is None else row_form(r), **sampling)
    yield from group.items()


def stream(engine: Engine, tokenizer, prompt: str, n: int = 1, opts: SampleOptions | None = None,
           usage: dict | None = None, cancelled: threading.Event | None = None) -> Iterator[Event]:
    """`generate.stream` through the engine: the same Events (stop strings, held-back text, usage),
    each of the n samples a row of its own (see row_generators for their seeds); `cancelled`: see Group."""
    opts = (opts or SampleOptions()).validate()
    ids = encode_prompt(tokenizer, prompt)
    states = [RowState(i, StreamDecoder(tokenizer), stop_strings(opts)) for i in range(n)]

    def on_token(r: int, tok: int):
        ev = states[r].push(tok)
        return states[r].done, ev

    def count() -> None:
        if usage is not None:
            usage.update(prompt_tokens=len(ids) * n, completion_tokens=sum(s.tokens for s in states),
                         completion_tokens_each=[s.tokens for s in states])

    count()
    for ev in run_rows(engine, ids, n, opts.max_new_tokens, opts.seed, on_token,
                       on_length=lambda r: states[r].finish(), cancelled=cancelled, temperature=opts.temperature,
                       top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
                       presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty):
        yield ev
        count()
    count()

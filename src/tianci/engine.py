"""Continuous batching: many sequences, one forward per step (what `tianci serve --max-batch N` decodes with).

`generate` decodes rows that start together and step in lockstep. A server's requests arrive and end
at any time, so an `Engine` keeps `max_batch` slots and one loop (vLLM's and llama.cpp's `-cb`):

- the KV cache is allocated once, `max_batch` rows: that is the memory bound. A slot's row is a
  `KVCache.row` view with its own position;
- a new sequence waits in a FIFO queue until a slot is free, then is prefilled into its slot alone
  (batch 1, as `generate` prefills one row);
- every step runs `GPT.decode_step` once over the occupied slots, each row at its own position;
- each row samples with its own temperature / top-k / top-p / min-p / penalties / logits hook (the composer's masks) and
  its own `torch.Generator`, so a seeded row draws the same numbers whatever else is in the batch;
- a row whose context fills block_size re-reads its last block_size tokens every step, exactly as
  `generate` does (all such rows in one forward); a row that finishes or is cancelled frees its
  slot at once.

A `Row` says what to decode; its `on_token` runs on the engine's thread (the row's state machine:
`generate.RowState`, the composer's decoder) and must be quick. A `Group` is the caller's side:
rows submitted together whose outputs it reads back in its own thread (and cancels when it stops
reading); `tianci.batched` submits requests as groups (`stream` is `generate.stream` through an
engine). The loop runs in a thread of its own (`start`), or in the reader's thread when none was
started (tests, scripts).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from . import formpos
from .errors import ParameterError
from .generate import count_drawn, next_token, penalize

MAX_BATCH = 256  # the server runs a waiting thread per admitted request: keep that bounded too


class RowsCancelled(Exception):
    """A reader's rows were cancelled under it (its cancel event was set, or the engine closed)."""


class CancelFlag:
    """A row's cancel flag: set by its reader leaving, or by an outside event the reader was given
    (the server's job flag), which the reader itself never sets."""

    def __init__(self, outside: threading.Event | None = None):
        self.own = threading.Event()
        self.outside = outside

    def set(self) -> None:
        self.own.set()

    def is_set(self) -> bool:
        return self.own.is_set() or (self.outside is not None and self.outside.is_set())


@dataclass
class Row:
    """One sequence for the engine: its prompt, how to sample it, and where its tokens go."""

    ids: list[int]  # the prompt (its last block_size tokens are used, as in generate)
    max_new_tokens: int
    on_token: Callable[[int], bool]  # each new token, on the engine's thread; True: the row is finished
    on_end: Callable[[str, BaseException | None], None]  # "stop" | "length" | "cancelled" | "error"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0  # generate.penalize, on the tokens this row drew
    frequency_penalty: float = 0.0
    generator: torch.Generator | None = None
    logits_hook: Callable[[torch.Tensor, int], torch.Tensor] | None = None  # (1, V) logits, step -> logits
    form_hook: Callable[[int], torch.Tensor] | None = None  # a form model's (2,) ids, step -> ids (generate's)
    cancelled: CancelFlag = field(default_factory=CancelFlag)


@dataclass
class _Slot:
    """A row in the batch: its cache view, the last block_size tokens, what it drew so far."""

    row: Row
    cache: object  # model.KVCache: this slot's row of the engine's cache
    ctx: list[int]  # the last block_size tokens, prompt and drawn: what a (re-)prefill reads
    steps: int = 0  # tokens drawn
    fresh: bool = True  # not prefilled yet: the last token of ctx is not in the cache either way
    form: torch.Tensor | None = None  # a form row's (len(ctx), 2) ids beside ctx in a forward (tianci.formpos)
    counts: torch.Tensor | None = None  # (1, V) how often it drew each token, once a penalty needs them


@dataclass
class EngineStats:
    steps: int = 0  # batched decode steps
    prefills: int = 0
    tokens: int = 0  # tokens drawn, all rows
    peak_active: int = 0  # most rows in the batch at once (never above max_batch)


class Engine:
    """max_batch slots over one model. A model without a KV cache and decode_step (any model that
    honours forward(idx) -> (logits, loss), as generate's no-cache path does) still decodes here,
    each row recomputing its context every step, unbatched."""

    def __init__(self, model, max_batch: int = 16):
        if not 1 <= max_batch <= MAX_BATCH:
            raise ParameterError("max_batch", max_batch, f"1..{MAX_BATCH}", "rows decoded together")
        self.model = model.eval()
        cfg = getattr(model, "config", None)
        self.block = cfg.block_size if cfg is not None else None
        self.max_batch = max_batch
        batched = self.block is not None and hasattr(model, "new_kv_cache") and hasattr(model, "decode_step")
        self.cache = model.new_kv_cache(max_batch) if batched else None  # the one allocation: max_batch rows
        self.views = [self.cache.row(i) if batched else None for i in range(max_batch)]
        p = next(iter(model.parameters()), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.slots: list[_Slot | None] = [None] * max_batch
        self.waiting: deque[Row] = deque()  # FIFO: admitted in the order submitted
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._stepping = threading.Lock()  # one step at a time, whichever thread drives the loop
        self.thread: threading.Thread | None = None  # the loop's, once started
        self._closed = False

    # ------------------------------------------------------------------------- any thread

    def submit(self, row: Row) -> Row:
        if row.max_new_tokens < 0:
            raise ParameterError("max_new_tokens", row.max_new_tokens, ">= 0")
        if not row.ids:  # generate.encode_prompt never gives an empty prompt; a caller's own rows might
            raise ParameterError("ids", row.ids, "at least one token", "the row's prompt")
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self.waiting.append(row)
            self._cond.notify()
        return row

    def active(self) -> int:
        return sum(s is not None for s in self.slots)

    def start(self) -> "Engine":
        """Run the loop in a daemon thread of its own (the server's)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="tianci-engine", daemon=True)
            self.thread.start()
        return self

    def close(self) -> None:
        """Stop the loop; every row still running or waiting ends "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self.thread is not None:
            self.thread.join()
        for s in range(self.max_batch):
            if self.slots[s] is not None:
                self._retire(s, "cancelled")
        while self.waiting:
            _end(self.waiting.popleft(), "cancelled")

    # ------------------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self.waiting and not self.active():
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as e:  # a bug outside the model and the rows: end them all, keep serving
                for s in range(self.max_batch):
                    if self.slots[s] is not None:
                        self._retire(s, "error", e)

    @torch.no_grad()
    def step(self) -> bool:
        """One iteration: retire cancelled rows, admit waiting rows into free slots, one batched
        decode step over every slot that is not (re-)prefilled, draw each row's next token.
        False when there was nothing to do."""
        with self._stepping:
            return self._step()

    def _step(self) -> bool:
        with self._cond:
            for s, slot in enumerate(self.slots):
                if slot is not None and slot.row.cancelled.is_set():
                    self._retire(s, "cancelled")
            if any(row.cancelled.is_set() for row in self.waiting):  # never started: leave the queue now
                for row in [r for r in self.waiting if r.cancelled.is_set()]:
                    self.waiting.remove(row)
                    _end(row, "cancelled")
            while self.waiting and None in self.slots:
                row = self.waiting.popleft()
                if row.max_new_tokens == 0:
                    _end(row, "length")
                    continue
                s = self.slots.index(None)  # the lowest free slot keeps the stepped prefix short
                self.slots[s] = _Slot(row, self.views[s], list(row.ids[-self.block:] if self.block else row.ids))
        live = [s for s, slot in enumerate(self.slots) if slot is not None]
        if not live:
            return False
        self.stats.peak_active = max(self.stats.peak_active, len(live))
        try:
            logits = self._forward(live)
        except Exception as e:  # a fault of the model, not of one row: every row in the batch ends
            for s in live:
                self._retire(s, "error", e)
            return True
        self._draw(logits)
        return True

    def _forward(self, live: list[int]) -> dict[int, torch.Tensor]:
        """(1, V) float32 logits of each live slot's next token: one batched decode step for the slots
        with room in their cache, one forward without a cache for those whose context is full, and a
        prefill into its slot for each new one."""
        self._form_step(live)
        if self.cache is None:  # no KV cache: each row's whole context, as generate's no-cache path
            return {s: self.model(torch.tensor([self.slots[s].ctx], device=self.device),
                                  **self._forms([s], len(self.slots[s].ctx)))[0][:, -1, :].float() for s in live}
        fresh = [s for s in live if self.slots[s].fresh]
        full = [s for s in live if not self.slots[s].fresh and self.slots[s].cache.pos >= self.block]
        decode = [s for s in live if s not in fresh and s not in full]
        dev, out = self.device, {}
        if decode:
            # Decode first: a slot in the stepped prefix that is free, new or full takes a dummy token
            # at its own position, where nothing it reads later is stored (a prefill below rewrites it).
            hi = decode[-1] + 1
            stepped = set(decode)
            toks = [self.slots[s].ctx[-1] if s in stepped else 0 for s in range(hi)]
            pos = [0 if self.slots[s] is None else min(self.slots[s].cache.pos, self.block - 1) for s in range(hi)]
            step = self.model.decode_step(torch.tensor(toks, device=dev)[:, None], torch.tensor(pos, device=dev),
                                          self.cache.k[:, :hi], self.cache.v[:, :hi],
                                          **self._forms([s if s in stepped else None for s in range(hi)], 1)).float()
            self.stats.steps += 1
            for s in decode:
                self.slots[s].cache.advance(1)
                out[s] = step[s:s + 1]
        if full:
            # Past the context every step re-reads the last block_size tokens, as generate's cache
            # refill does; the result is never decoded from, so these rows need no cache, and all
            # of them (each exactly block_size tokens) share one forward.
            ctx = torch.tensor([self.slots[s].ctx for s in full], dtype=torch.long, device=dev)
            logits = self.model(ctx, **self._forms(full, self.block))[0][:, -1, :].float()
            self.stats.prefills += 1
            for j, s in enumerate(full):
                out[s] = logits[j:j + 1]
        for s in fresh:
            slot = self.slots[s]
            slot.cache.reset()
            ctx = torch.tensor([slot.ctx], dtype=torch.long, device=dev)
            out[s] = self.model(ctx, kv_cache=slot.cache, **self._forms([s], ctx.size(1)))[0][:, -1, :].float()
            slot.fresh = False
            self.stats.prefills += 1
        return out

    def _form_step(self, live: list[int]) -> None:
        """Each form row's ids beside its ctx, as generate keeps them: the prompt's own off its text
        when admitted, then the row's form_hook for the token it draws now (its state machine has
        taken every token before)."""
        for s in live:
            slot = self.slots[s]
            if slot.row.form_hook is not None:
                if slot.form is None:
                    slot.form = formpos.from_tokens(torch.tensor([slot.ctx], device=self.device),
                                                    self.model.form_classes)[0]
                hook = slot.row.form_hook(slot.steps).to(self.device)
                slot.form = torch.cat([slot.form[len(slot.form) - len(slot.ctx) + 1:], hook[None]])

    def _forms(self, slots: list[int | None], T: int) -> dict:
        """The form keyword of a forward over these slots' last T positions: none for a plain model;
        a row without a form hook, or a stepped-over slot (None), is unknown (tianci.formpos)."""
        if not formpos.uses_form(self.model):
            return {}
        unknown = formpos.unknown(1, T, device=self.device)[0]
        return {"form": torch.stack([self.slots[s].form[-T:] if s is not None and self.slots[s].form is not None
                                     else unknown for s in slots])}

    def _draw(self, logits: dict[int, torch.Tensor]) -> None:
        """Each row's next token: its own hook, then one filter and one draw for all the rows that
        sample alike (each row still drawing from its own generator), then its own state machine.
        The filters and the sampler work row by row, so a row gets the token it gets alone."""
        alike: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for s in sorted(logits):
            row = self.slots[s].row
            try:
                lg = penalize(logits[s], self.slots[s].counts, row.presence_penalty, row.frequency_penalty)
                lg = lg if row.logits_hook is None else row.logits_hook(lg, self.slots[s].steps)
                if lg.shape != logits[s].shape:  # caught here, it cannot take the rows sampled with it down
                    raise ValueError(f"a logits hook returned shape {tuple(lg.shape)}, not {tuple(logits[s].shape)}")
            except Exception as e:  # this row's hook failed: only this row ends
                self._retire(s, "error", e)
                continue
            alike.setdefault((row.temperature, row.top_k, row.top_p, row.min_p), []).append((s, lg))
        for (temperature, top_k, top_p, min_p), rows in alike.items():
            try:
                toks = next_token(torch.cat([lg for _, lg in rows]), temperature, top_k, top_p,
                                  [self.slots[s].row.generator for s, _ in rows], min_p).tolist()
            except Exception as e:  # the sampler's own fault: these rows end
                for s, _ in rows:
                    self._retire(s, "error", e)
                continue
            for (s, lg), tok in zip(rows, toks):
                slot = self.slots[s]
                if slot.row.presence_penalty or slot.row.frequency_penalty:
                    slot.counts = count_drawn(slot.counts, torch.tensor([tok], device=lg.device), lg.size(-1))
                self._take(s, tok)

    def _take(self, s: int, tok: int) -> None:
        slot, row = self.slots[s], self.slots[s].row
        try:
            slot.steps += 1
            self.stats.tokens += 1
            # keep at most block-1 old tokens (none at block_size 1), as generate does
            slot.ctx = (slot.ctx if self.block is None else slot.ctx[max(0, len(slot.ctx) - self.block + 1):]) + [tok]
            finished = row.on_token(tok)
        except Exception as e:  # this row's state machine failed: only this row ends
            self._retire(s, "error", e)
            return
        if finished:
            self._retire(s, "stop")
        elif slot.steps >= row.max_new_tokens:
            self._retire(s, "length")

    def _retire(self, s: int, reason: str, error: BaseException | None = None) -> None:
        slot, self.slots[s] = self.slots[s], None
        _end(slot.row, reason, error)


def _end(row: Row, reason: str, error: BaseException | None = None) -> None:
    try:
        row.on_end(reason, error)
    except Exception:  # a reader's callback must not take the loop down
        pass


# ----------------------------------------------------------------------------- the caller's side

@dataclass(frozen=True)
class _Done:
    reason: str
    error: BaseException | None


class Group:
    """Rows submitted together; their outputs read back in the caller's thread.

    A row's on_token puts what the reader should see with `put` (on the engine's thread); `items()`
    yields it in order and ends when every row has ended, raising a row's error (RowsCancelled if
    they were cancelled). Leaving `items()` early (the reader stopped) cancels the rows still
    running or waiting, and so does setting `cancelled` from any thread (the server's job flag when
    its client went away: a row still waiting for a slot is then never started)."""

    def __init__(self, engine: Engine, cancelled: threading.Event | None = None):
        self.engine = engine
        self.cancelled = CancelFlag(cancelled)  # every row's flag
        self.rows: list[Row] = []
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._open = 0

    def put(self, item) -> None:
        self._q.put(item)

    def add(self, ids: list[int], max_new_tokens: int, on_token: Callable[[int], bool],
            on_length: Callable[[], object] | None = None, **sampling) -> Row:
        """Submit one row; on_length() may return a last item to put when it runs out of tokens."""
        def on_end(reason: str, error: BaseException | None) -> None:
            if reason == "length" and on_length is not None:
                last = on_length()
                if last is not None:
                    self._q.put(last)
            self._q.put(_Done(reason, error))

        row = Row(list(ids), max_new_tokens, on_token, on_end, cancelled=self.cancelled, **sampling)
        self.rows.append(row)
        self._open += 1
        self.engine.submit(row)
        return row

    def items(self) -> Iterator:
        try:
            while self._open:
                if self.engine.thread is None:  # no loop thread: the reader drives it
                    while self._q.empty() and self.engine.step():
                        pass
                item = self._q.get()
                if isinstance(item, _Done):
                    self._open -= 1
                    if item.error is not None:
                        raise item.error
                    if item.reason == "cancelled":
                        raise RowsCancelled()
                else:
                    yield item
        finally:
            self.cancelled.set()  # a no-op for rows that ended

"""Sampling: one function (`generate`) that the CLI, the composer, the server and the tests share.

`generate` is a lazy generator: it yields the next token of every row, one step at a time, so a
caller can stream text, stop early, or (the composer) look at token t before masking step t+1.
With the KV cache each step costs one token's forward pass; without it, the whole (cropped)
context is recomputed every step, as in the tutorial. Both give the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch.nn import functional as F

from . import formpos
from .errors import TianciError
from .sampling import CONTINUE_SAMPLING, check_sampling
from .tokenizer import StreamDecoder

if TYPE_CHECKING:
    from .decode import CompiledDecoder

POEM_END = "\n\n"  # the corpus separates poems with a blank line


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """(B, V) logits -> logits with the excluded tokens at -inf. temperature == 0 is greedy.
    min_p keeps the tokens whose probability (after temperature) is at least min_p times the row's
    largest; top-k and top-p only drop tokens below the largest and keep the ratios of the rest, so the
    three compose in any order, and the top token always survives."""
    if temperature <= 0:
        keep = logits == logits.max(dim=-1, keepdim=True).values
        # ties: keep only the first maximum so greedy decoding is deterministic
        first = keep.float().argmax(dim=-1, keepdim=True)
        out = torch.full_like(logits, float("-inf"))
        return out.scatter(-1, first, 0.0)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        logits = _top_p(logits, top_p)
    if min_p is not None and 0 < min_p < 1:
        # p_i >= min_p * p_max  <=>  logit_i - logit_max >= log(min_p): no softmax, and the top token
        # (difference 0) cannot drop; -inf (masked) stays -inf. A row of all -inf (NaN) keeps its state.
        top = logits.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(logits - top < math.log(min_p), float("-inf"))
    return logits


def _top_p_sorted(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p rule itself: sort, drop a token when the tokens ranked above it already cover
    top_p of the mass, scatter back."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = F.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """_top_p_sorted's result, bit for bit, ~10x cheaper on the CPU: torch.sort of a 6k vocabulary
    costs ~0.4 ms a row (half of a 填词 row's step), numpy's value sort ~0.03 ms. The sorted values
    are unique whatever the algorithm, so the nucleus mass (softmax and cumsum of the same tensor)
    is too, and a row whose kept positions are a prefix ending strictly above the next value keeps
    exactly the tokens at or above its last kept value. A row where that is not so (tied values
    across the cut, where torch's sort order decided, a non-monotone rounding, NaN) takes the
    sorting rule itself."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 2:
        return _top_p_sorted(logits, top_p)
    import numpy as np

    values = torch.from_numpy(np.ascontiguousarray(np.sort(logits.numpy(), axis=-1)[:, ::-1]))
    probs = F.softmax(values, dim=-1)
    drop = probs.cumsum(dim=-1) - probs > top_p
    keep = (~drop).sum(dim=-1, keepdim=True)  # >= 1: the first token never drops
    V = logits.size(-1)
    last = values.gather(-1, keep - 1)  # the last kept value
    after = values.gather(-1, keep.clamp(max=V - 1))  # the first dropped one (itself when none is)
    exact = (drop == (torch.arange(V) >= keep)).all(dim=-1) & ((keep == V) | (after < last)).squeeze(-1)
    exact &= ~torch.isnan(values[:, :1]).squeeze(-1)  # numpy sorts NaN first once reversed
    out = logits.masked_fill(logits < last, float("-inf"))
    if not exact.all():
        bad = (~exact).nonzero().squeeze(-1)
        out[bad] = _top_p_sorted(logits[bad], top_p)
    return out


def penalize(logits: torch.Tensor, counts: torch.Tensor | None, presence: float = 0.0,
             frequency: float = 0.0) -> torch.Tensor:
    """OpenAI's repetition penalties on (B, V) raw logits (before temperature and the filters): each
    token already drawn loses `presence`, and `frequency` times how often it was drawn. counts (B, V)
    holds how often each row drew each token (`count_drawn`); the prompt does not count, as in
    OpenAI's API. Negative values favour repeats. A -inf logit stays -inf."""
    if counts is None or not (presence or frequency):
        return logits
    return logits - (frequency * counts + presence * (counts > 0).to(logits.dtype))


def count_drawn(counts: torch.Tensor | None, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """counts (B, V) after each row drew tokens (B,); None starts from zero."""
    if counts is None:
        counts = torch.zeros((tokens.size(0), vocab_size), device=tokens.device)
    return counts.scatter_add_(1, tokens[:, None], torch.ones((tokens.size(0), 1), device=tokens.device))


Generators = torch.Generator | list[torch.Generator | None] | None


def sample_from_logits(logits: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids drawn from softmax(logits), by inverting the CDF with one
    uniform number per row. Same distribution as torch.multinomial, ~5x cheaper on the CPU (it
    draws one random number instead of one per vocabulary entry). A token whose logit is -inf has
    probability 0 and is never drawn: side="right" skips the flat steps of the CDF. generator: one
    for the batch, or a list, one per row (the batched engine's rows: row i draws its number from
    its own, exactly as it would alone)."""
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V), last column ~1
    total = cdf[:, -1:]
    if isinstance(generator, list):
        u = torch.cat([torch.rand((1, 1), generator=g, device=logits.device) for g in generator])
    else:
        u = torch.rand((logits.size(0), 1), generator=generator, device=logits.device)
    u = u * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # rounding must not reach the end
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: Generators = None,
               min_p: float | None = None) -> torch.Tensor:
    """(B, V) float logits -> (B,) next tokens: filtered, then greedy or drawn. The one sampling rule
    of generate and of the batched engine (tianci.engine)."""
    logits = filter_logits(logits, temperature, top_k, top_p, min_p)
    return logits.argmax(dim=-1) if temperature <= 0 else sample_from_logits(logits, generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             generator: torch.Generator | None = None,
             logits_hook: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
             use_cache: bool = True, decoder: "CompiledDecoder | None" = None,
             form_hook: Callable[[int], torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token id of every row, (B,), for up to max_new_tokens steps.

    idx (B, T) is the prompt. Prompts longer than the context keep their last block_size tokens.
    presence_penalty / frequency_penalty: `penalize`, on the tokens this call has drawn, before the hook.
    logits_hook(logits (B, V) float32, step) may mask tokens (-inf) before sampling.
    decoder: a `tianci.decode.CompiledDecoder` of this model: decode with its compiled fixed-shape
    step where it can (the caller keeps it, and so the compile, across calls).
    form_hook(step) -> (B, 2) (a form model, tianci.formpos): where the token this step draws stands
    in its clause, asked before the step's forward (the composer knows it from the pattern); the
    prompt's own positions are read off its text. None: the model is told no form."""
    block = model.config.block_size if hasattr(model, "config") else None
    use_cache = use_cache and hasattr(model, "new_kv_cache") and block is not None
    step_fn = decoder.step(idx.size(0)) if use_cache and decoder is not None else None
    cache = step_fn.cache if step_fn is not None else model.new_kv_cache(idx.size(0)) if use_cache else None
    seq = idx
    new = form = None  # form: (B, seq length, 2) beside seq when there is a form_hook
    counts = None  # (B, V) how often each row drew each token, kept only when a penalty reads it
    penalized = bool(presence_penalty or frequency_penalty)
    for step in range(max_new_tokens):
        if form_hook is not None:
            f = form_hook(step).to(seq.device)[:, None]
            form = (torch.cat([formpos.from_tokens(seq, model.form_classes), f], dim=1) if form is None
                    else torch.cat([form[:, form.size(1) - seq.size(1) + 1:], f], dim=1))  # trimmed as seq was
        if cache is None:
            ctx = seq if block is None else seq[:, -block:]
            logits, _ = model(ctx, **_form(form, ctx.size(1)))
        elif new is None or cache.pos >= block:
            # first step, or the cache is full: (re)fill it from the last block tokens, exactly
            # the context the no-cache path sees (past the context length each step is a prefill).
            cache.reset()
            logits, _ = model(seq[:, -block:], kv_cache=cache, **_form(form, block))
        elif step_fn is not None:
            logits = step_fn(new[:, None], **_form(form, 1))[:, None, :]  # (B, 1, V); the step advances the cache
        else:
            logits, _ = model(new[:, None], kv_cache=cache, **_form(form, 1))
        logits = penalize(logits[:, -1, :].float(), counts, presence_penalty, frequency_penalty)
        if logits_hook is not None:
            logits = logits_hook(logits, step)
        new = next_token(logits, temperature, top_k, top_p, generator, min_p)
        if penalized:
            counts = count_drawn(counts, new, logits.size(-1))
        # keep at most block-1 old tokens (max(0, ...): at block_size=1, -block+1 == 0 kept everything)
        seq = torch.cat([seq[:, max(0, seq.size(1) - block + 1):] if block else seq, new[:, None]], dim=1)
        yield new


def _form(form: torch.Tensor | None, last: int) -> dict:
    """The form keyword of a forward over the last `last` positions (none without a form hook)."""
    return {} if form is None else {"form": form[:, -last:]}


# ----------------------------------------------------------------------------- text level

@dataclass
class SampleOptions:
    max_new_tokens: int = 200
    temperature: float = CONTINUE_SAMPLING.temperature
    top_k: int | None = CONTINUE_SAMPLING.top_k
    top_p: float | None = CONTINUE_SAMPLING.top_p
    min_p: float | None = CONTINUE_SAMPLING.min_p  # 0 or None = off
    presence_penalty: float = CONTINUE_SAMPLING.presence_penalty
    frequency_penalty: float = CONTINUE_SAMPLING.frequency_penalty
    seed: int | None = None
    stop_at_end: bool = False  # stop a sample at the end of a poem (a blank line)
    stop: tuple[str, ...] = ()
    use_cache: bool = True

    def validate(self) -> "SampleOptions":
        if not 0 <= self.max_new_tokens <= 100_000:
            raise TianciError(f"max_new_tokens={self.max_new_tokens} is out of range 0..100000")
        if not 0 <= self.temperature <= 10:
            raise TianciError(f"temperature={self.temperature} is out of range 0..10")
        if self.top_k is not None and self.top_k < 0:
            raise TianciError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise TianciError(f"top_p={self.top_p} is out of range (0, 1]")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise TianciError(f"min_p={self.min_p} is out of range [0, 1) (0 = off)")
        check_sampling(presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty)
        return self


@dataclass
class Event:
    index: int  # which sample
    text: str  # new text (may be "" when a token completes no character yet)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length"


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt)
    if not ids:  # an empty prompt starts where a poem starts: after a blank line
        try:
            ids = tokenizer.encode(POEM_END)
        except TianciError:
            ids = [0]
    return ids


@dataclass
class RowState:
    """One sample's text as its tokens arrive (nanochat's RowState): the streaming decoder, the
    text so far, how much of it was already shown, whether a stop string ended it."""
    index: int  # which sample
    decoder: StreamDecoder
    stops: list[str]
    text: str = ""
    sent: int = 0  # characters of text already yielded (a possible stop-string prefix is held back)
    done: bool = False
    tokens: int = 0  # tokens drawn for this row (the usage count)

    def push(self, token: int) -> Event | None:
        """Take the row's next token; the text it lets us show, if any (finished at a stop string)."""
        self.tokens += 1
        piece = self.decoder.push(token)
        if not piece:
            return None
        before = len(self.text)
        self.text += piece
        hit = _first_stop(self.text, self.stops, before)
        if hit is not None:
            self.text, self.done = self.text[:hit], True
            return Event(self.index, self.text[self.sent:], True, "stop")
        safe = _safe_len(self.text, self.stops)
        if safe <= self.sent:
            return None
        ev = Event(self.index, self.text[self.sent:safe])
        self.sent = safe
        return ev

    def finish(self) -> Event:
        """The row ran out of tokens: whatever is held back, and "length"."""
        self.text += self.decoder.flush()
        self.done = True
        return Event(self.index, self.text[self.sent:], True, "length")


def stop_strings(opts: SampleOptions) -> list[str]:
    return list(opts.stop) + ([POEM_END] if opts.stop_at_end else [])


def stream(model, tokenizer, prompt: str, n: int = 1, opts: SampleOptions | None = None,
           device=None, usage: dict | None = None, decoder: "CompiledDecoder | None" = None) -> Iterator[Event]:
    """Sample n continuations of prompt; yield text pieces as they are decoded. `usage`, if given,
    is filled with prompt_tokens / completion_tokens. decoder: see `generate`."""
    opts = (opts or SampleOptions()).validate()
    device = device or next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompt)
    idx = torch.tensor([ids] * n, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(opts.seed if opts.seed is not None else torch.seed() % (2**63))
    rows = [RowState(i, StreamDecoder(tokenizer), stop_strings(opts)) for i in range(n)]
    if usage is not None:
        usage.update(prompt_tokens=len(ids) * n, completion_tokens=0)
    was_training = model.training
    model.eval()
    try:
        for tok in generate(model, idx, opts.max_new_tokens, temperature=opts.temperature,
                            top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
                            presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty,
                            generator=gen, use_cache=opts.use_cache, decoder=decoder):
            for row, t in zip(rows, tok.tolist()):
                ev = None if row.done else row.push(t)
                if ev is not None:
                    yield ev
            if usage is not None:
                usage["completion_tokens"] = sum(r.tokens for r in rows)
                usage["completion_tokens_each"] = [r.tokens for r in rows]
            if all(r.done for r in rows):
                break
    finally:
        model.train(was_training)
    for row in rows:
        if not row.done:
            yield row.finish()


def _safe_len(text: str, stops: list[str]) -> int:
    """How much of text may be shown: hold back a tail that could still grow into a stop string
    (so a stop split over two tokens, such as a poem's closing blank line, never leaks its first half)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return len(text) - hold


def _first_stop(text: str, stops: list[str], before: int) -> int | None:
    """Index where the earliest stop string starts, searching only what the new piece could complete."""
    best = None
    for s in stops:
        j = text.find(s, max(0, before - len(s) + 1))
        if j >= 0 and (best is None or j < best):
            best = j
    return best


def complete(model, tokenizer, prompt: str, n: int = 1, opts: SampleOptions | None = None,
             device=None) -> list[Completion]:
    texts, reasons = [""] * n, ["length"] * n
    usage: dict = {}
    for ev in stream(model, tokenizer, prompt, n, opts, device, usage):
        texts[ev.index] += ev.text
        if ev.finished:
            reasons[ev.index] = ev.finish_reason or "length"
    each = usage.get("completion_tokens_each", [0] * n)
    ptoks = usage.get("prompt_tokens", 0) // max(n, 1)
    return [Completion(t, r, ptoks, c) for t, r, c in zip(texts, reasons, each)]

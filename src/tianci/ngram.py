"""The counting model: the tutorial's simplemodel.py as an n-gram of order k, in pure Python.

Order k means k tokens of context: k=1 is the tutorial's bigram (the next character given the
previous one). Fitting is counting; there is no gradient and no torch.

Probabilities, for a context h (the last k tokens) and next token w:
  add_k > 0   add-k smoothing over the vocabulary: (c(h,w) + add_k) / (c(h) + add_k * V)
  add_k = 0   interpolated Witten-Bell backoff down to a uniform distribution:
              P_k(w|h) = (c(h,w) + T(h) * P_{k-1}(w|h')) / (c(h) + T(h)),  P_{-1}(w) = 1/V
              where T(h) is the number of distinct tokens seen after h and h' drops h's oldest
              token. An unseen context (c(h)=0) falls straight through to the shorter one, and
              every token keeps a non-zero probability, so the val loss is always finite.
The loss is the mean negative log-likelihood in nats per token, like the GPT's cross-entropy.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from array import array
from collections import Counter
from operator import itemgetter
from pathlib import Path

from .errors import TianciError


class NGram:
    def __init__(self, order: int = 1, vocab_size: int = 0, add_k: float = 0.0):
        if not 1 <= order <= 8:
            raise TianciError(f"order={order} is not allowed: expected 1..8")
        if add_k < 0:
            raise TianciError(f"add_k={add_k} is not allowed: expected >= 0")
        self.order, self.vocab_size, self.add_k = order, vocab_size, add_k
        # For n = 0..order: grams[n][(h..., w)] = how often w followed the n-token context h;
        # totals[n][h] = c(h) (sum over w) and types[n][h] = T(h) (distinct w seen after h).
        self.grams: list[dict[tuple, int]] = [{} for _ in range(order + 1)]
        self.totals: list[dict[tuple, int]] = [{} for _ in range(order + 1)]
        self.types: list[dict[tuple, int]] = [{} for _ in range(order + 1)]
        self.tail: tuple = ()  # the last `order` training ids (see _index)
        self._nexts: list[dict[tuple, tuple[list, list]]] | None = None  # for sampling, built lazily

    # ------------------------------------------------------------------------- fitting

    def fit(self, ids) -> "NGram":
        """Count every n-gram of length 1..order+1 in `ids` (a sequence of token ids)."""
        ids = list(ids)
        L = len(ids)
        if L < 2:
            raise TianciError(f"need at least 2 tokens to fit an n-gram, got {L}")
        self.vocab_size = max(self.vocab_size, max(ids) + 1)
        for n in range(self.order + 1):
            # Counter over zipped shifted slices counts in C: seconds for millions of tokens.
            self.grams[n] = Counter(zip(*(ids[i:] for i in range(n + 1))))
        self.tail = tuple(ids[-self.order:])
        self._index()
        return self

    def _index(self) -> None:
        """totals and types from the gram counts.

        c(h) counts the times h is followed by a token: that is h's count as an n-gram, except
        for its occurrence at the very end of the training ids (`tail`), which nothing follows."""
        for n, grams in enumerate(self.grams):
            if n == 0:
                self.totals[0] = {(): sum(grams.values())}
            else:
                totals = dict(self.grams[n - 1])
                if len(self.tail) >= n:  # else the ids were shorter than n: no n-gram at all
                    last = self.tail[len(self.tail) - n:]
                    totals[last] -= 1
                    if not totals[last]:
                        del totals[last]
                self.totals[n] = totals
            self.types[n] = Counter(map(_CONTEXT, grams))
        self._nexts = None

    # ------------------------------------------------------------------------- probabilities

    def prob(self, context, w: int) -> float:
        """P(w | the last `order` tokens of context)."""
        h = tuple(context[-self.order:]) if context else ()
        if self.add_k > 0:
            n = len(h)
            c = self.grams[n].get(h + (w,), 0)
            return (c + self.add_k) / (self.totals[n].get(h, 0) + self.add_k * self.vocab_size)
        p = 1.0 / self.vocab_size
        for n in range(len(h) + 1):  # shortest context first, each level interpolates the one below
            hn = h[len(h) - n:]
            total = self.totals[n].get(hn)
            if total is None:
                break  # a longer context that contains an unseen one is unseen too
            types = self.types[n][hn]
            p = (self.grams[n].get(hn + (w,), 0) + types * p) / (total + types)
        return p

    def _nexts_of(self, n: int, h: tuple):
        if self._nexts is None:  # group the counts by context once, for sampling
            self._nexts = []
            for grams in self.grams:
                nexts: dict[tuple, tuple[list, list]] = {}
                for g, c in grams.items():
                    ws, cs = nexts.setdefault(g[:-1], ([], []))
                    ws.append(g[-1])
                    cs.append(c)
                self._nexts.append(nexts)
        return self._nexts[n].get(h)

    def distribution(self, context) -> list[float]:
        """The full next-token distribution (sums to 1): used for sampling and in tests."""
        V = self.vocab_size
        h = tuple(context[-self.order:]) if context else ()
        levels = [len(h)] if self.add_k > 0 else range(len(h) + 1)
        p = [1.0 / V] * V
        for n in levels:
            hn = h[len(h) - n:]
            nx = self._nexts_of(n, hn)
            if self.add_k > 0:
                denom = self.totals[n].get(hn, 0) + self.add_k * V
                p = [self.add_k / denom] * V
                lam_denom = denom
            elif nx is None:
                break
            else:
                lam_denom = self.totals[n][hn] + self.types[n][hn]
                lam = self.types[n][hn] / lam_denom
                p = [x * lam for x in p]
            for w, c in zip(*nx) if nx else ():
                p[w] += c / lam_denom
        return p

    def loss(self, ids, *, fitted: bool = False) -> float:
        """Mean negative log-likelihood (nats per token) of ids[1:], each given its preceding
        tokens (at most `order` of them: the first few positions see a shorter context).

        fitted=True says `ids` are the very ids given to fit(): their (order+1)-gram counts are
        already in the model, so the train loss costs no second counting pass."""
        ids = list(ids)
        if len(ids) < 2:
            raise TianciError(f"need at least 2 tokens to measure a loss, got {len(ids)}")
        k = self.order
        nll = 0.0
        for t in range(1, min(k, len(ids))):  # the start, with less than k tokens of context
            nll -= math.log(self.prob(ids[:t], ids[t]))
        # Every later position has a full context: score each distinct (k+1)-gram once.
        grams = self.grams[k] if fitted else Counter(zip(*(ids[i:] for i in range(k + 1))))
        if self.add_k == 0:
            probs = self._gram_probs(list(grams))
        else:
            probs = {g: self.prob(g[:-1], g[-1]) for g in grams}
        for g, c in grams.items():
            nll -= c * math.log(probs[g])
        return nll / (len(ids) - 1)

    def _gram_probs(self, top: list[tuple]) -> dict[tuple, float]:
        """Witten-Bell P(g[-1] | g[:-1]) for many (k+1)-grams at once, level by level from the
        unigram up, so each shorter gram they share is computed once (what makes loss() fast)."""
        k, prev = self.order, None
        for n in range(k + 1):
            keys = set(map(itemgetter(slice(k - n, None)), top)) if n < k else top
            grams, totals, types = self.grams[n], self.totals[n], self.types[n]
            cur = {}
            for g in keys:
                lower = prev[g[1:]] if prev is not None else 1.0 / self.vocab_size
                h = g[:-1]
                total = totals.get(h)
                cur[g] = lower if total is None else (grams.get(g, 0) + types[h] * lower) / (total + types[h])
            prev = cur
        return prev

    # ------------------------------------------------------------------------- sampling

    def sample(self, prompt_ids, max_new_tokens: int, temperature: float = 1.0, seed: int | None = None,
               rng: random.Random | None = None) -> list[int]:
        """New token ids after prompt_ids (the prompt is not repeated), drawn one at a time."""
        if temperature <= 0:
            raise TianciError(f"temperature={temperature} is not allowed: expected > 0")
        if max_new_tokens < 0:
            raise TianciError(f"max_new_tokens={max_new_tokens} is not allowed: expected >= 0")
        rng = rng or random.Random(seed)
        ctx, out = list(prompt_ids)[-self.order:], []
        for _ in range(max_new_tokens):
            if temperature == 1.0 and self.add_k == 0:
                w = self._draw(tuple(ctx), rng)
            else:
                p = self.distribution(ctx)
                w = rng.choices(range(self.vocab_size), weights=[x ** (1.0 / temperature) for x in p])[0]
            out.append(w)
            ctx = (ctx + [w])[-self.order:]
        return out

    def _draw(self, h: tuple, rng: random.Random) -> int:
        """One exact draw from the Witten-Bell mixture without building the whole distribution:
        at each level keep the counted choice with weight c(h)/(c(h)+T(h)), else go one level down."""
        for n in range(len(h), -1, -1):
            hn = h[len(h) - n:]
            total = self.totals[n].get(hn)
            if total is None:
                continue
            if rng.random() * (total + self.types[n][hn]) < total:
                ws, cs = self._nexts_of(n, hn)
                return rng.choices(ws, weights=cs)[0]
        return rng.randrange(self.vocab_size)

    # ------------------------------------------------------------------------- save / load

    def to_dict(self) -> dict:
        # Each level as two flat lists (all ids of all grams, then their counts): compact JSON
        # that loads back with C-speed json parsing and zips.
        return {"order": self.order, "vocab_size": self.vocab_size, "add_k": self.add_k,
                "tail": list(self.tail),
                "levels": [{"ids": [i for g in grams for i in g], "counts": list(grams.values())}
                           for grams in self.grams]}

    def save(self, path) -> None:
        from .files import atomic_write
        atomic_write(path, json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path) -> "NGram":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            m = cls(int(d["order"]), int(d["vocab_size"]), float(d["add_k"]))
            m.tail = tuple(int(i) for i in d["tail"])
            levels = d["levels"]
            if len(levels) != m.order + 1:
                raise ValueError(f"{len(levels)} levels for order {m.order}")
            for n, lv in enumerate(levels):
                ids, counts = lv["ids"], lv["counts"]
                if len(ids) != (n + 1) * len(counts):
                    raise ValueError(f"level {n}: {len(ids)} ids for {len(counts)} counts")
                m.grams[n] = dict(zip(zip(*[iter(ids)] * (n + 1)), counts))
            m._index()
        except FileNotFoundError:
            raise TianciError(f"n-gram model file {path} does not exist") from None
        except (ValueError, KeyError, TypeError) as e:
            raise TianciError(f"n-gram model file {path} is malformed: {e!r}") from None
        return m


_CONTEXT = itemgetter(slice(None, -1))  # gram -> its context, in C (for Counter(map(...)))


# ----------------------------------------------------------------------------- run glue

def read_bin(path, dtype: str = "uint16") -> array:
    """A nanoGPT .bin (little-endian uint16/uint32 ids) as an array, without numpy."""
    code = {"uint16": "H", "uint32": "I"}.get(dtype)
    if code is None:
        raise TianciError(f"{path}: dtype {dtype!r} is not allowed: expected uint16|uint32")
    a = array(code)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TianciError(f"token file {path} does not exist (run `tianci prepare` first)") from None
    if len(data) % a.itemsize:
        raise TianciError(f"{path} has {len(data)} bytes, not a whole number of {dtype} ids")
    a.frombytes(data)
    if sys.byteorder == "big":
        a.byteswap()
    return a


def train_run(preset, data_dir, out_dir, force: bool = False, quiet: bool = False) -> dict:
    """Fit the counting model of `preset` on data_dir/train.bin, measure it, write the run dir
    (through checkpoint.Run, as every run). Losses are nats per character, as the GPT's, with
    nats per token beside them when tokens are not characters."""
    from .checkpoint import Run, loss_fields
    from .config import to_dict
    from .corpus import DataDir

    data = DataDir(data_dir)
    meta = data.meta()
    cfg = preset.ngram.validate()
    run = Run.create(out_dir, force=force)
    t0 = time.time()
    train = read_bin(data.path / "train.bin", meta["dtype"])
    val = read_bin(data.path / "val.bin", meta["dtype"])
    model = NGram(cfg.order, int(meta["vocab_size"]), cfg.add_k).fit(train)
    fit_s = time.time() - t0
    per_token = {"train": model.loss(train, fitted=True), "val": model.loss(val)}
    elapsed = time.time() - t0
    result = {"step": 0, "eval": True, "time": round(elapsed, 3), "tokens": len(train), "fit_time": fit_s}
    for split, nats in per_token.items():
        result.update(loss_fields(split, nats, meta))
    run.begin("ngram", to_dict(preset), data.path)
    model.save(run.path / "ngram.json")
    run.write_metrics([result])
    if not quiet:
        print(f"{preset.name}: order-{cfg.order} n-gram on {len(train):,} tokens in {fit_s:.1f}s  "
              f"train {result['train_loss']:.4f}  val {result['val_loss']:.4f} nats/char  "
              f"val {result['val_bpc']:.3f} bits/char  -> {run.path}")
    return result


def sample_run(run_dir, prompt: str = "", max_new_tokens: int = 100, temperature: float = 1.0,
               seed: int | None = None, num_samples: int = 1) -> list[str]:
    """Texts (prompt + continuation) sampled from a counting-model run directory."""
    from .checkpoint import Run
    from .errors import RunError

    run = Run(run_dir)
    if not (run.path / "ngram.json").is_file():
        raise RunError(f"{run.path} is not a counting-model run (no ngram.json)")
    tok = run.tokenizer()
    model = NGram.load(run.path / "ngram.json")
    if model.vocab_size != tok.vocab_size:
        raise RunError(f"{run.path / 'ngram.json'} counts {model.vocab_size} tokens but "
                       f"{run.path / 'tokenizer.json'} has {tok.vocab_size}: they are from different runs")
    ids = tok.encode(prompt)  # strict: an unknown character is named, not dropped
    # No prompt: start as if a poem had just ended, so the model writes a title line first.
    ctx = ids if ids else tok.encode("\n\n", errors="skip")
    rng = random.Random(seed)
    return [prompt + tok.decode(model.sample(ctx, max_new_tokens, temperature, rng=rng))
            for _ in range(num_samples)]

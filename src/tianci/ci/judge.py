"""Judges of composed ci that are not the generating model, shared by `compose-eval` and reranking.

- `normalise`: the text a judge reads: Han characters, every run of punctuation or line breaks as
  one "/" (so neither judge can tell poems apart by the editors' choice of ，、；).
- `KneserNey`: an interpolated, modified Kneser–Ney character n-gram (Chen & Goodman 1998: three
  discounts per order from the count-of-counts; continuation counts below the top order), trained
  on the train split. The generating model scoring its own samples favours them (they are what it
  finds likely); this judge has never seen them. Counting uses numpy over int64 codes of the
  n-grams (12 bits per character: the 4094 most frequent characters, the rest one UNK id), so the
  2 M-character corpus trains in seconds. kenlm's pip package can query but not build models.
- `ClauseEnds`: the characters real ci almost never ends a clause with (不, 一, 自, 欲, 莫 …: their
  clause-final rate is under a tenth of the average), from the train split; a clause ending on
  one is "broken": the decoder forced a pause the phrase had not reached.
- `craft`: per-poem counts of broken clauses, distinct characters, reduplication (AA) and
  rhyme characters used twice.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .tones import is_han

BREAK = "/"
# Judge.critic_weight's default: judge + 1 x critic, 8 drafts (docs/compose.md §9: on the 10-minute Xeon model
# 0.5 / 1 / 1.5 / 2 gave AUC 0.715 / 0.667 / 0.658 / 0.664 at judge 4.759 / 4.830 / 4.862 / 4.869, real 4.768)
CRITIC_WEIGHT = 1.0
BITS = 12  # bits per character id in an n-gram code: 5 × 12 = 60 < 63
BOS, UNK = 0, 1


def normalise(text: str) -> str:
    """Han characters kept, each run of anything else (marks, newlines, spaces) as one BREAK."""
    return re.sub(r"/+", BREAK, "".join(ch if is_han(ch) else BREAK for ch in text)).strip(BREAK) + BREAK


def clauses(text: str) -> list[str]:
    """The clauses of a poem: runs of Han characters between marks."""
    return [c for c in normalise(text).split(BREAK) if c]


class KneserNey:
    """Interpolated modified Kneser–Ney over characters. `nll(text)`: mean nats per symbol of
    normalise(text) (Han characters and breaks), each predicted from the order-1 before it."""

    def __init__(self, texts: list[str], order: int = 5):
        assert 1 <= order <= 63 // BITS, order
        self.order = order
        freq = Counter(ch for t in texts for ch in normalise(t))
        keep = [ch for ch, _ in freq.most_common((1 << BITS) - 2)]
        self.ids = {ch: i + 2 for i, ch in enumerate(keep)}
        self.V = len(keep) + 1  # predictable symbols: the kept characters and UNK (never BOS)
        seqs = [self._encode(t) for t in texts]
        cat, tgt = self._windows(seqs)
        codes = {k: self._codes(cat, tgt, k) for k in range(1, order + 1)}
        self.grams: list[np.ndarray] = [None] * (order + 1)  # type: ignore[list-item]
        self.counts: list[np.ndarray] = [None] * (order + 1)  # type: ignore[list-item]
        g, c = np.unique(codes[order], return_counts=True)  # raw counts at the top order
        self.grams[order], self.counts[order] = g, c
        for k in range(order - 1, 0, -1):  # continuation counts: distinct left extensions
            suffix = self.grams[k + 1] & ((1 << (BITS * k)) - 1)
            g, c = np.unique(suffix, return_counts=True)
            self.grams[k], self.counts[k] = g, c
        self.D = [None] + [self._discounts(self.counts[k]) for k in range(1, order + 1)]
        self.hist: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [None, None]  # type: ignore[list-item]
        for k in range(2, order + 1):  # per history: its total count and its back-off weight
            h, inv = np.unique(self.grams[k] >> BITS, return_inverse=True)
            c = self.counts[k]
            tot = np.bincount(inv, weights=c)
            d = self.D[k]
            mass = np.bincount(inv, weights=d[np.minimum(c, 3) - 1])
            self.hist.append((h, tot, mass / tot))
        c1 = self.counts[1]
        self.uni_tot = float(c1.sum())
        self.uni_gamma = float(self.D[1][np.minimum(c1, 3) - 1].sum()) / self.uni_tot

    def _encode(self, text: str) -> list[int]:
        return [self.ids.get(ch, UNK) for ch in normalise(text)]

    def _windows(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """All sequences, each after order-1 BOS, concatenated; and the positions of their symbols."""
        pad = [BOS] * (self.order - 1)
        cat, tgt, n = [], [], 0
        for s in seqs:
            cat += pad + s
            tgt.extend(range(n + len(pad), n + len(pad) + len(s)))
            n += len(pad) + len(s)
        return np.asarray(cat, dtype=np.int64), np.asarray(tgt, dtype=np.int64)

    @staticmethod
    def _codes(cat: np.ndarray, tgt: np.ndarray, k: int) -> np.ndarray:
        code = np.zeros(len(tgt), dtype=np.int64)
        for j in range(k):  # oldest first: the predicted symbol ends up in the lowest bits
            code = (code << BITS) | cat[tgt - (k - 1) + j]
        return code

    @staticmethod
    def _discounts(c: np.ndarray) -> np.ndarray:
        n = [int((c == i).sum()) for i in range(1, 5)]
        if min(n) == 0:  # too little data for the estimate: plain absolute discounting
            return np.array([0.5, 0.5, 0.5])
        y = n[0] / (n[0] + 2 * n[1])
        d = np.array([1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]])
        return np.clip(d, 0.05, np.array([1.0, 2.0, 3.0]))

    def _lookup(self, keys: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return i, table[i] == keys

    def probs(self, cat: np.ndarray, tgt: np.ndarray) -> np.ndarray:
        """P(symbol at each tgt | the order-1 symbols before it in cat)."""
        w = cat[tgt]
        i, hit = self._lookup(w, self.grams[1])
        c = np.where(hit, self.counts[1][i], 0)
        d = np.where(c > 0, self.D[1][np.clip(c, 1, 3) - 1], 0.0)
        p = np.maximum(c - d, 0) / self.uni_tot + self.uni_gamma / self.V
        for k in range(2, self.order + 1):
            code = self._codes(cat, tgt, k)
            h, tot, gamma = self.hist[k]
            hi, hhit = self._lookup(code >> BITS, h)
            gi, ghit = self._lookup(code, self.grams[k])
            c = np.where(ghit, self.counts[k][gi], 0)
            d = np.where(c > 0, self.D[k][np.clip(c, 1, 3) - 1], 0.0)
            seen = np.maximum(c - d, 0) / np.where(hhit, tot[hi], 1.0) + gamma[hi] * p
            p = np.where(hhit, seen, p)
        return p

    def nll(self, text: str) -> float:
        cat, tgt = self._windows([self._encode(text)])
        return float(-np.log(self.probs(cat, tgt)).mean())

    def nlls(self, texts: list[str]) -> list[float]:
        """nll of each text, in one vectorised pass."""
        seqs = [self._encode(t) for t in texts]
        cat, tgt = self._windows(seqs)
        lp = -np.log(self.probs(cat, tgt))
        out, k = [], 0
        for s in seqs:
            out.append(float(lp[k:k + len(s)].mean()))
            k += len(s)
        return out


class ClauseEnds:
    """Which characters end clauses in real ci, from the train split."""

    def __init__(self, texts: list[str], ratio: float = 0.1, min_count: int = 50):
        total, final = Counter(), Counter()
        for t in texts:
            for c in clauses(t):
                total.update(c)
                final[c[-1]] += 1
        base = sum(final.values()) / max(sum(total.values()), 1)
        self.rare = frozenset(ch for ch, n in total.items()
                              if n >= min_count and final[ch] / n < ratio * base)

    def broken(self, text: str) -> int:
        return sum(c[-1] in self.rare for c in clauses(text))


@dataclass
class Craft:
    clauses: int
    broken: int           # clauses ending on a character real ci almost never ends one with
    chars: int
    distinct: int         # distinct Han characters
    pairs: int            # adjacent character pairs inside clauses
    redup: int            # of them AA (the same character twice)
    rhymes: int           # rhyme positions (when the form is known)
    rhyme_repeats: int    # rhyme positions whose character an earlier rhyme of the group used


def craft(text: str, ends: ClauseEnds, rhyme: tuple[int, ...] = (), repeat: tuple[int, ...] = ()) -> Craft:
    """`rhyme`/`repeat`: the form's per-slot rhyme groups and 叠 (a repeat the form asks for is not
    counted); empty when the poem's form is unknown."""
    cs = clauses(text)
    han = [ch for ch in text if is_han(ch)]
    pairs = sum(len(c) - 1 for c in cs)
    redup = sum(a == b for c in cs for a, b in zip(c, c[1:]))
    rhymes = reps = 0
    if rhyme and len(rhyme) == len(han):
        seen: dict[int, set[str]] = {}
        for i, (ch, g) in enumerate(zip(han, rhyme)):
            if g < 0:
                continue
            rhymes += 1
            if repeat and repeat[i] >= 0:
                continue
            reps += ch in seen.setdefault(g, set())
            seen[g].add(ch)
    return Craft(len(cs), ends.broken(text), len(han), len(set(han)), pairs, redup, rhymes, reps)


def summarise(cs: list[Craft]) -> dict:
    """Rates over many poems (ratios of sums, except distinct: mean per poem)."""
    def ratio(a, b):
        return a / b if b else math.nan
    return {"poems": len(cs),
            "broken_clauses": ratio(sum(c.broken for c in cs), sum(c.clauses for c in cs)),
            "distinct": ratio(sum(c.distinct / c.chars for c in cs if c.chars), sum(1 for c in cs if c.chars)),
            "redup": ratio(sum(c.redup for c in cs), sum(c.pairs for c in cs)),
            "rhyme_repeats": ratio(sum(c.rhyme_repeats for c in cs), sum(c.rhymes for c in cs))}


def train_texts(corpus) -> list[str]:
    """The train split's poems (paragraphs joined by newlines) of a CorpusStats."""
    return ["\n".join(p.paragraphs) for p in corpus.poems if p.split != "val"]


@dataclass(frozen=True)
class Judge:
    """What reranking scores candidates with: the independent n-gram and the craft rules, plus the
    run's critic when it has one (tianci.ci.critic: how much a draft reads like this machine)."""

    lm: KneserNey
    ends: ClauseEnds
    # nats added per fault, on the scale of a poem's mean nats per symbol (~5): a fault costs
    # about what a tenth of a nat per symbol of fluency is worth over a 50-symbol poem
    penalty: float = 0.1
    critic: object = None  # a critic.Critic, or None
    # the critic's log-odds added per nat of judge fluency: chosen by compose-eval (docs/compose.md §9)
    critic_weight: float = CRITIC_WEIGHT

    @classmethod
    def from_corpus(cls, corpus, order: int = 5, critic=None) -> "Judge":
        texts = train_texts(corpus)
        return cls(KneserNey(texts, order), ClauseEnds(texts), critic=critic)

    @classmethod
    def for_run(cls, corpus, run_dir) -> "Judge":
        """The judge composing uses for a run: the corpus's, with the run's critic if it has one."""
        from .critic import Critic

        return cls.from_corpus(corpus, critic=Critic.load(run_dir))

    def scores(self, texts: list[str], rhyme: tuple[int, ...] = (), repeat: tuple[int, ...] = ()) -> list[float]:
        """Lower is better: judge nats per symbol plus `penalty` per broken clause, unintended
        reduplication (AA) and repeated rhyme character, plus critic_weight × the critic's log-odds
        that the draft is the machine's."""
        out = []
        for t, nll in zip(texts, self.lm.nlls(texts)):
            c = craft(t, self.ends, rhyme, repeat)
            out.append(nll + self.penalty * (c.broken + c.redup + c.rhyme_repeats))
        if self.critic is not None and texts:
            out = [s + self.critic_weight * float(x) for s, x in zip(out, self.critic.logits(texts))]
        return out

"""What the corpus itself says about each 词牌: the punctuation/line-length skeletons of its poems.

A skeleton is one string per paragraph with '*' for each character and the paragraph's pause marks
kept, e.g. 浣溪沙 → ('*******。', '*******。', '*******。', '*******，*******。', '*******。').
The corpus (chinese-poetry, and so `tianci prepare`'s poems.jsonl) writes one sentence per paragraph,
always ending in 。, with ，/、 inside — the same convention the 词谱's `ci_sep` lines follow.

For a 词牌 the 词谱 lacks, `infer_form` turns the most common skeleton into a form:
- tones: a position is 平 (仄) when ≥ 85% of the known-tone characters there, over ≥ 5 poems, are
  (polyphones don't vote); otherwise 中 — so with few poems everything is 中;
- rhyme: a paragraph-final position rhymes when, in over half of the poems (≥ 3 poems), its
  character shares a 词林正韵 部 with the poem's most common 部 at paragraph ends; all such
  positions form one rhyme group (no rhyme changes are inferred). With < 3 poems: no rhyme.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TianciError
from .tones import PING, ZE, ZHONG, Phonology, is_han

PAUSE, STOP = "，、", "。"


def skeleton_line(par: str) -> str | None:
    """'*' per Han character; ；：, → ，; ？！。 at the end → 。; None for a paragraph that is not one
    clean sentence (odd characters, no final stop)."""
    out = []
    for i, ch in enumerate(par):
        last = i == len(par) - 1
        if is_han(ch):
            out.append("*")
        elif ch in "，、；：":
            out.append("、" if ch == "、" else "，")
        elif ch in "。？！":
            out.append("。" if last else "，")
        else:
            return None
    s = "".join(out)
    if not s.endswith("。") or not s.startswith("*") or re.search(r"[，、。][，、。]", s):
        return None
    return s


def skeleton(paragraphs: list[str]) -> tuple[str, ...] | None:
    lines = [skeleton_line(p) for p in paragraphs]
    return None if not lines or None in lines else tuple(lines)


@dataclass
class CorpusPoem:
    title: str
    author: str
    paragraphs: list[str]
    split: str = "train"


@dataclass
class CorpusStats:
    """Poems grouped by their title (the corpus spelling of the 词牌, e.g. '望江南・忆江南')."""

    poems: list[CorpusPoem] = field(default_factory=list)
    by_title: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_poems(cls, poems: list[CorpusPoem]) -> "CorpusStats":
        st = cls(poems)
        for i, p in enumerate(poems):
            st.by_title.setdefault(p.title, []).append(i)
        return st

    def skeletons(self, titles: list[str]) -> Counter:
        c: Counter = Counter()
        for t in titles:
            for i in self.by_title.get(t, []):
                sk = skeleton(self.poems[i].paragraphs)
                if sk:
                    c[sk] += 1
        return c


def find_poems_file(data: str | os.PathLike | None) -> Path | None:
    """poems.jsonl in `data` (a file or a prepared data directory), else None."""
    if data is None:
        return None
    p = Path(data)
    if p.is_file():
        return p
    if (p / "poems.jsonl").is_file():
        return p / "poems.jsonl"
    return None


def load_corpus(data: str | os.PathLike | None = None) -> CorpusStats | None:
    """From poems.jsonl (written by `tianci prepare`), or directly from a chinese-poetry directory
    (a folder with 宋词/; all poems count as train). None when `data` is None."""
    if data is None:
        return None
    f = find_poems_file(data)
    poems = []
    if f is not None:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if d.get("genre", "ci") != "ci":  # the classical verse of a pretraining corpus: not ci
                    continue
                poems.append(CorpusPoem(d["rhythmic"], d.get("author", ""), list(d["paragraphs"]),
                                        d.get("split", "train")))
            except (ValueError, KeyError, TypeError) as e:
                raise TianciError(f"{f}: line {n} is not a poem record ({e})") from None
    elif (Path(data) / "宋词").is_dir():
        from ..corpus import load_poems  # only here: reading chinese-poetry is the corpus module's job

        poems = [CorpusPoem(p.rhythmic, p.author, p.paragraphs) for p in load_poems(data)]
    else:
        raise TianciError(f"no corpus at {data}: expected poems.jsonl (run `tianci prepare`) or a "
                          f"chinese-poetry directory with 宋词/")
    return CorpusStats.from_poems(poems)


def infer_form_marks(sk: tuple[str, ...], texts: list[list[str]], phon: Phonology | None
                     ) -> tuple[str, tuple[int, ...]]:
    """Tones and rhyme groups for skeleton `sk` from the poems (`texts`, paragraphs) that have it."""
    n_chars = sum(line.count("*") for line in sk)
    if phon is None:
        return ZHONG * n_chars, (-1,) * n_chars
    chars = ["".join(ch for ch in "".join(par) if is_han(ch)) for par in texts]
    chars = [c for c in chars if len(c) == n_chars]
    tones = []
    for pos in range(n_chars):
        votes = Counter()
        for c in chars:
            t = phon.tones(c[pos])
            if len(t) == 1:
                votes[next(iter(t))] += 1
        total = sum(votes.values())
        best = max((PING, ZE), key=lambda t: votes[t])
        tones.append(best if total >= 5 and votes[best] >= 0.85 * total else ZHONG)
    finals, k = [], 0
    for line in sk:
        k += line.count("*")
        finals.append(k - 1)
    rhyme = [-1] * n_chars
    if len(chars) >= 3:
        hits = Counter()
        for c in chars:
            bus = Counter(b for f in finals for b in phon.groups(c[f]))
            if not bus:
                continue
            main = bus.most_common(1)[0][0]
            hits.update(f for f in finals if main in phon.groups(c[f]))
        for f in finals:
            if hits[f] > len(chars) / 2:
                rhyme[f] = 0
    return "".join(tones), tuple(rhyme)

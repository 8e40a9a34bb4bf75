"""Theme words drawn from each poem's own text, for its header (Jiuge's approach): trained with
`浣溪沙〈春雨 归舟〉 作者` before poems that contain 春雨 and 归舟, the model learns to write about
the words in its title line, and `compose --theme 春雨,归舟` asks for them.

A theme word is a two-character phrase inside one clause of the poem that at least `min_poems`
training poems share (so it is a word a reader could ask for, not a chance pair), with no function
character (不, 之, 何 ... a request is for 春雨, not 不知). Which ones and how many (1–3) are drawn
per poem from a seeded generator, in random order (a user's words come in any order).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from .header import THEME_MAX

# characters that make a phrase a function phrase rather than something to write about
FUNCTION_CHARS = set("不之也而其以于与为乃且亦所者何此是了着的得个这那又便却犹还已只更最都皆俱正未莫休须应"
                     "欲自曾将把被在向从如似若恰几一两三相无有谁奈")
_CLAUSE = re.compile(r"[\u3400-\u9fff]+")


def _clause_pairs(text: str) -> set[str]:
    return {c[i:i + 2] for c in _CLAUSE.findall(text) for i in range(len(c) - 1)}


@dataclass
class ThemeWords:
    """The phrases that may be theme words, with how many training poems hold each."""

    poems_with: Counter
    min_poems: int = 20

    @classmethod
    def from_texts(cls, texts, min_poems: int = 20, max_neighbour: float = 0.5) -> "ThemeWords":
        """Phrases in at least `min_poems` of `texts`, and not a fragment of a longer one: a pair
        whose next (or previous) character is the same one in over `max_neighbour` of its
        occurrences (念故 before 人, 天涯 of 天涯路 is fine: its neighbours vary) is cut out of a word."""
        poems: Counter = Counter()
        tri: Counter = Counter()  # every pair with its two neighbours, "^"/"$" at a clause's ends
        for t in texts:
            poems.update(p for p in _clause_pairs(t) if not (set(p) & FUNCTION_CHARS))
            for c in _CLAUSE.findall(t):
                c = f"^{c}$"
                tri.update(c[i:i + 3] for i in range(len(c) - 2))
        total: Counter = Counter()
        top: dict[tuple[int, str], int] = {}  # (0: next, 1: previous character, pair) -> most often
        for g, n in tri.items():
            total[g[:2]] += n
            for side, pair, ch in ((0, g[:2], g[2]), (1, g[1:], g[0])):
                if ch not in "^$" and n > top.get((side, pair), 0):
                    top[(side, pair)] = n
        keep = Counter({p: k for p, k in poems.items() if k >= min_poems
                        and max(top.get((0, p), 0), top.get((1, p), 0)) <= max_neighbour * total[p]})
        return cls(keep, min_poems)

    def candidates(self, text: str) -> list[str]:
        """The theme words `text` holds, in a fixed order (by first occurrence)."""
        have = _clause_pairs(text)
        seen, out = set(), []
        for c in _CLAUSE.findall(text):
            for i in range(len(c) - 1):
                p = c[i:i + 2]
                if p in have and p in self.poems_with and p not in seen:
                    seen.add(p)
                    out.append(p)
        return out

    def pick(self, text: str, rng: random.Random) -> tuple[str, ...]:
        """1..THEME_MAX words of `text`, no two sharing a character; () when it has none."""
        cands = self.candidates(text)
        if not cands:
            return ()
        k = rng.randint(1, THEME_MAX)
        out: list[str] = []
        for w in rng.sample(cands, len(cands)):
            if len(out) == k:
                break
            if not any(set(w) & set(o) for o in out):
                out.append(w)
        return tuple(out)


def draw_themes(bodies: list[str], is_val: list[bool], fraction: float, seed: int) -> list[tuple[str, ...]]:
    """The theme of each poem (`bodies`: its text without the title line): for a `fraction` of the
    train poems, words of its own text; () for the rest, and always () for val poems, so val loss
    stays comparable with a corpus prepared without themes (and the model learns plain headers too)."""
    words = ThemeWords.from_texts([b for b, v in zip(bodies, is_val) if not v])
    out = []
    for i, (b, v) in enumerate(zip(bodies, is_val)):
        rng = random.Random(seed * 1_000_003 + 104729 + i)  # per poem: its draw does not depend on the others'
        out.append(words.pick(b, rng) if not v and rng.random() < fraction else ())
    return out

"""The title line of a poem in the corpus: the one writer and reader of its format.

    浣溪沙 晏殊                       ci (the house genre: no tag, the tutorial's `词牌 作者`)
    浣溪沙〈春雨 归舟〉 晏殊           ci with a theme: 1–3 words of the poem, to condition on
    【诗】帝京篇十首 一 太宗皇帝        another genre: its tag, then the title (spaces allowed), the author
    【诗经】关雎                       no author: the title alone

The model reads the line before the poem, so it knows what it is writing (genre) and what about
(theme); `compose` writes the same line as its prompt (`Header.prompt`, up to where the model
writes the author). ci carries no tag so a ci-only corpus is byte-for-byte the tutorial's, and a
model trained on it composes as before; any other genre's tag tells the two apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ParameterError

CI = "ci"
# genre -> the tag written in the header ("" for ci)
GENRES = {CI: "", "shi": "诗", "qu": "曲", "shijing": "诗经", "chuci": "楚辞"}
TAG_OPEN, TAG_CLOSE = "【", "】"
THEME_OPEN, THEME_CLOSE, THEME_SEP = "〈", "〉", " "
MARKS = TAG_OPEN + TAG_CLOSE + THEME_OPEN + THEME_CLOSE  # never in a theme word or a title
THEME_MAX = 3  # words in one theme


def check_theme(words) -> tuple[str, ...]:
    """The theme as a tuple of words; a word with a mark, a space or a line break, an empty word or
    more than THEME_MAX words is a ParameterError (a header with it would not read back)."""
    if isinstance(words, str):
        words = re.split(r"[,，、;；\s]+", words.strip())
    out = tuple(w.strip() for w in words)
    bad = [w for w in out if not w or any(c in MARKS or c.isspace() for c in w)]
    if bad or len(out) > THEME_MAX:
        raise ParameterError("theme", ",".join(out), f"1..{THEME_MAX} words separated by commas or spaces, "
                             f"without {MARKS}", why="each word is written into the title line")
    return out


@dataclass(frozen=True)
class Header:
    title: str  # the 词牌 for ci, the poem's title otherwise
    author: str = ""
    genre: str = CI
    theme: tuple[str, ...] = ()

    def __post_init__(self):
        if self.genre not in GENRES:
            raise ParameterError("genre", self.genre, "|".join(GENRES))

    def prompt(self) -> str:
        """The line up to the author: what compose feeds the model before it writes the author."""
        tag = f"{TAG_OPEN}{GENRES[self.genre]}{TAG_CLOSE}" if GENRES[self.genre] else ""
        theme = f"{THEME_OPEN}{THEME_SEP.join(self.theme)}{THEME_CLOSE}" if self.theme else ""
        return f"{tag}{self.title}{theme} "

    def text(self) -> str:
        """The whole title line (no newline)."""
        return (self.prompt() + self.author).rstrip(" ")

    @classmethod
    def parse(cls, line: str) -> "Header":
        """The inverse of `text` (a ci line without marks reads as `词牌 作者`)."""
        line, genre = line.strip("\n"), CI
        if line.startswith(TAG_OPEN) and TAG_CLOSE in line:
            tag, line = line[1:].split(TAG_CLOSE, 1)
            genre = next((g for g, t in GENRES.items() if t == tag), None)
            if genre is None:
                raise ParameterError("genre", tag, "|".join(t for t in GENRES.values() if t))
        theme: tuple[str, ...] = ()
        if THEME_OPEN in line and THEME_CLOSE in line:
            title, rest = line.split(THEME_OPEN, 1)
            words, author = rest.split(THEME_CLOSE, 1)
            theme, author = tuple(w for w in words.split(THEME_SEP) if w), author.strip()
        elif " " in line:
            title, author = line.rsplit(" ", 1)
        else:
            title, author = line, ""
        return cls(title.strip(), author, genre, theme)

"""Phonology for 填词: the tone class (平 level / 仄 oblique) and 词林正韵 rhyme group of each character.

Which source decides, and why:

1. `Cilin_Rhyme.json` of charlesix59/chinese_word_rhyme (MIT) — the 词林正韵 (戈载, 1821), the rhyme
   book written *for ci*. It lists every reading of ~5000 characters as (部 1..19, 平声/仄声/入声),
   so it decides both the tone and the rhyme group wherever it has the character. Its tones are the
   Middle-Chinese ones the Song poets used: 入声 (the entering tone, 部 15..19) counts as 仄 even
   where Mandarin has since turned it level (国, 月, 白 ...).
2. `Word_Tune.json` (same repo, the 平水韵 tone of ~8200 characters; "多" = both) — tone only, for
   characters the 词林正韵 lacks. Same era, same 入声 handling; it has no ci rhyme groups.
3. pypinyin (optional, `pip install pypinyin`) — modern Mandarin tone for anything else: tones 1,2 →
   平, 3,4 → 仄. Caveat: Mandarin lost the 入声, so a few old entering-tone characters missing from
   both tables would be misclassified as 平; they are rare characters (the tables cover the common
   ones). pypinyin gives no rhyme group, so such characters never fill a rhyme slot.

Polyphonic characters ("多", 看, 重, 中 ...) keep every reading: they fit a slot if any reading fits.
A character no source knows fits only 中 (either-tone) slots.

The tables come from the `rhyme` source of tianci.sources (--rhyme-source, TIANCI_RHYME_SOURCE, the
remembered source or the upstream URL, cached after the first download)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from .. import sources
from ..errors import TianciError

BU_NAMES = ["第一部", "第二部", "第三部", "第四部", "第五部", "第六部", "第七部", "第八部", "第九部",
            "第十部", "第十一部", "第十二部", "第十三部", "第十四部", "第十五部", "第十六部",
            "第十七部", "第十八部", "第十九部"]
PING, ZE, ZHONG = "平", "仄", "中"


def is_han(ch: str) -> bool:
    """A CJK ideograph (the basic block, extension A, the compatibility block, extensions B+)."""
    if len(ch) != 1:
        return False
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x3134F)


@dataclass
class Phonology:
    """readings[ch] = set of (tone 平|仄, 部 1..19 or 0 when the source gives no rhyme group)."""

    readings: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)
    use_pypinyin: bool = True

    @classmethod
    def load(cls, source: str | os.PathLike | None = None, use_pypinyin: bool = True) -> "Phonology":
        cilin = sources.read_json("rhyme", "Cilin_Rhyme.json", source)
        try:
            tunes = sources.read_json("rhyme", "Word_Tune.json", source)
        except TianciError:
            tunes = {}  # optional: the 词林正韵 alone still decides most characters
        return cls.from_tables(cilin, tunes, use_pypinyin)

    @classmethod
    def from_tables(cls, cilin: dict, tunes: dict, use_pypinyin: bool = True) -> "Phonology":
        readings: dict[str, set[tuple[str, int]]] = {}
        for bu_name, by_tone in cilin.items():
            bu = BU_NAMES.index(bu_name) + 1 if bu_name in BU_NAMES else 0
            for tone_name, chars in by_tone.items():
                tone = PING if tone_name.startswith("平") else ZE  # 仄声 and 入声 are both 仄
                for ch in chars:
                    readings.setdefault(ch, set()).add((tone, bu))
        for ch, t in tunes.items():
            if ch in readings or len(ch) != 1:
                continue
            readings[ch] = {(PING, 0), (ZE, 0)} if t == "多" else {(t, 0)} if t in (PING, ZE) else set()
        return cls({c: frozenset(r) for c, r in readings.items() if r}, use_pypinyin)

    def lookup(self, ch: str) -> frozenset[tuple[str, int]]:
        r = self.readings.get(ch)
        if r is None:
            r = _pypinyin_readings(ch) if self.use_pypinyin and is_han(ch) else frozenset()
            self.readings[ch] = r  # memoise (also the misses)
        return r

    def tones(self, ch: str) -> set[str]:
        return {t for t, _ in self.lookup(ch)}

    def fits(self, ch: str, tone: str) -> bool:
        """May `ch` stand at a slot of this tone? 中 takes anything; polyphones any reading."""
        return tone == ZHONG or tone in self.tones(ch)

    def groups(self, ch: str, tone: str = ZHONG) -> set[int]:
        """词林正韵 部 (1..19) of the readings of `ch` with this tone (any tone for 中)."""
        return {b for t, b in self.lookup(ch) if b and (tone == ZHONG or t == tone)}


def bu_name(bu: int) -> str:
    return BU_NAMES[bu - 1] if 1 <= bu <= len(BU_NAMES) else "?"


@lru_cache(maxsize=None)
def _pypinyin_readings(ch: str) -> frozenset[tuple[str, int]]:
    try:
        from pypinyin import Style, pinyin
    except ImportError:  # optional dependency: unknown characters then fit only 中 slots
        return frozenset()
    out = set()
    for syl in pinyin(ch, style=Style.TONE3, heteronym=True, neutral_tone_with_five=True)[0]:
        d = syl[-1:] if syl[-1:].isdigit() else ""
        if d in ("1", "2"):
            out.add((PING, 0))
        elif d in ("3", "4"):
            out.add((ZE, 0))
    return frozenset(out)


_LOADED: dict[str, Phonology] = {}


def load_phonology(source: str | os.PathLike | None = None) -> Phonology:
    """Cached per source (the tables take ~50 ms to parse)."""
    key = sources.resolve("rhyme", source)[0]
    if key not in _LOADED:
        _LOADED[key] = Phonology.load(source)
    return _LOADED[key]

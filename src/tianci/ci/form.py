"""The shape of one 词牌 form: `Form` (what the decoder fills), its decoding plan of `Cell`s, and the
parsing of a 词谱 variant (couyun's ci_list entries) into a form.

A `Form` has one skeleton string per paragraph ('*' a character slot, then the punctuation), the
tone of each character slot (平/仄/中), its rhyme group (-1 = no rhyme) and, for a 叠, the earlier
slot it repeats. Paragraphs follow the corpus convention (one sentence ending in 。 per paragraph =
one `ci_sep` line of the 词谱); the 词谱 example (`origin`) gives the exact marks: 。 at a paragraph's
end, ， for a pause (句) and 、 for a 读 (a short break after a leading word) inside it. At a pause
slot either ，or 、 counts as right (editors use both), at a paragraph end only 。.

Rhyme groups come from `yun_classify` ({key: [positions]}): each key is one rhyme, a new key is a
rhyme change (换韵, e.g. 菩萨蛮's four); a negative position is a 叶 (same 部, other tone) and keeps
its group. Groups are numbered 0.. in order of first appearance."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .corpus_stats import PAUSE, STOP
from ..errors import DataError
from .tones import ZHONG


class CellKind(enum.Enum):
    CHAR = "char"        # a character slot of the pattern
    MARK = "mark"        # a punctuation mark inside or at the end of a paragraph
    NEWLINE = "newline"  # the paragraph break


@dataclass(frozen=True)
class Cell:
    """One token of the decoding plan: a character slot (`slot`: its index among the form's
    characters), a punctuation mark (`mark`: the pattern's mark) or a paragraph's newline."""

    kind: CellKind
    slot: int = -1
    mark: str = ""

    @property
    def is_char(self) -> bool:
        return self.kind is CellKind.CHAR

    def accepts(self) -> str:
        """The texts a mark or newline cell admits (a character slot: "", its masks decide)."""
        if self.kind is CellKind.MARK:
            return allowed_marks(self.mark)
        return "\n" if self.kind is CellKind.NEWLINE else ""



@dataclass(frozen=True)
class Variant:
    tones: str  # ge_lyu_str
    rhyme: tuple[int, ...]  # per character: rhyme group or -1
    lines: tuple[str, ...]  # skeleton per paragraph
    example: str  # origin
    repeat: tuple[int, ...] = ()  # per character: the earlier character a 叠 repeats, or -1


@dataclass(frozen=True)
class Form:
    name: str
    title: str  # what the prompt's title line says (the corpus spelling)
    source: str  # "词谱" or "corpus"
    variant: int | None  # 词谱 variant index, None for a corpus-derived form
    n_variants: int
    lines: tuple[str, ...]
    tones: str
    rhyme: tuple[int, ...]
    example: str = ""
    corpus_count: int = 0
    repeat: tuple[int, ...] = ()  # per character: slot of the earlier character a 叠 repeats, or -1

    def __post_init__(self):
        n = sum(line.count("*") for line in self.lines)
        assert n == len(self.tones) == len(self.rhyme), (self.name, n, len(self.tones), len(self.rhyme))
        assert not self.repeat or len(self.repeat) == n, (self.name, n, len(self.repeat))

    def repeat_of(self, slot: int) -> int:
        """The earlier slot whose character slot must repeat (a 叠 in the 词谱), or -1."""
        return self.repeat[slot] if self.repeat else -1

    @property
    def n_chars(self) -> int:
        return len(self.tones)

    def cells(self) -> list[Cell]:
        """The decoding plan, one `Cell` per token: character slots, marks, a newline per paragraph."""
        out, k = [], 0
        for line in self.lines:
            for ch in line:
                if ch == "*":
                    out.append(Cell(CellKind.CHAR, slot=k))
                    k += 1
                else:
                    out.append(Cell(CellKind.MARK, mark=ch))
            out.append(Cell(CellKind.NEWLINE))
        return out

    def where(self, slot: int) -> tuple[int, int]:
        """(paragraph, character in it), both 1-based, of character slot `slot`."""
        k = 0
        for li, line in enumerate(self.lines, 1):
            n = line.count("*")
            if slot < k + n:
                return li, slot - k + 1
            k += n
        raise AssertionError(slot)

    def line_starts(self, clauses: bool = False) -> list[int]:
        """Char slot index of the first character of each paragraph (or of each clause)."""
        starts, k = [], 0
        for line in self.lines:
            for i, ch in enumerate(line):
                if ch == "*":
                    if i == 0 or (clauses and line[i - 1] != "*"):
                        starts.append(k)
                    k += 1
        return starts


def allowed_marks(mark: str) -> str:
    """Punctuation a slot of this mark accepts."""
    return STOP if mark in STOP else PAUSE


def parse_variant(v: dict, where: str) -> Variant:
    tones = v["ge_lyu_str"]
    if set(tones) - {"平", "仄", "中"}:
        raise DataError(f"{where}: ge_lyu_str has marks other than 平/仄/中")
    rhyme = [-1] * len(tones)
    for g, (_, pos) in enumerate(sorted(v.get("yun_classify", {}).items(),
                                        key=lambda kv: min(abs(p) for p in kv[1]) if kv[1] else 0)):
        for p in pos:
            if abs(p) < len(tones):
                rhyme[abs(p)] = g
    for p in v.get("rhyme_pos", []):  # positions listed only in rhyme_pos join the first group
        if 0 <= p < len(tones) and rhyme[p] < 0:
            rhyme[p] = 0
    origin = v.get("origin", "")
    lines = _skeleton_from_origin(origin, len(tones))
    if lines is None:  # fall back to ci_sep, where a full-width space marks a pause
        lines = tuple(re.sub(r"[^　]", "*", s).replace("　", "，") + "。" for s in v["ci_sep"])
        if sum(s.count("*") for s in lines) != len(tones):
            raise DataError(f"{where}: ci_sep and ge_lyu_str disagree on the number of characters")
    repeat = _repeats(v.get("ge_lyu_sep") or [], rhyme, lines, origin, tones)
    if repeat:  # a repeated character must fit both slots' tones: 中 takes its partner's
        t = list(tones)
        for b, a in enumerate(repeat):
            if a >= 0 and ZHONG in (t[a], t[b]):
                t[a] = t[b] = t[b] if t[a] == ZHONG else t[a]
        tones = "".join(t)
    return Variant(tones, tuple(rhyme), lines, origin, repeat)


def _repeats(sep: list[str], rhyme: list[int], lines: tuple[str, ...] = (), example: str = "",
             tones: str = "") -> tuple[int, ...]:
    """叠 marks in ge_lyu_sep: a slot marked 叠 repeats an earlier character. When the 词谱's own
    example repeats the whole clause the 叠 ends (如梦令's 如梦。如梦。, 古调笑's 蝴蝶。蝴蝶。: the clause
    equals the clause before it, character for character, and their tones agree), every slot of the
    clause repeats its counterpart; otherwise only the marked slot repeats the rhyme character before it
    (解佩令's 春晴也好。春阴也好。). Marks that do not line up with ge_lyu_str are ignored."""
    n, marked = 0, []
    for ch in "".join(sep):
        if ch in "平仄中":
            n += 1
        elif ch == "叠" and n > 0:
            marked.append(n - 1)
    if not marked or n != len(rhyme):
        return ()
    out = [-1] * n
    for p in marked:
        earlier = [q for q in range(p) if rhyme[q] >= 0 or q in marked]
        if earlier:
            out[p] = earlier[-1]
    for p in marked:
        for a, b in _repeated_clause(p, lines, example, tones):
            out[b] = a
    return tuple(out) if any(r >= 0 for r in out) else ()


def _repeated_clause(p: int, lines: tuple[str, ...], example: str, tones: str) -> list[tuple[int, int]]:
    """(earlier slot, repeating slot) pairs when the clause ending at slot p repeats the one before it
    in the example; [] when it does not (or the example does not line up with the slots)."""
    chars = [ch for ch in example if not ch.isspace() and ch not in "。？！，、；："]
    clauses, k = [], 0  # (first slot, last slot) of each run of character slots
    for line in lines:
        for run in re.findall(r"\*+", line):
            clauses.append((k, k + len(run) - 1))
            k += len(run)
    if len(chars) != k or len(tones) != k:
        return []
    for c, (a, b) in enumerate(clauses):
        if b == p and c > 0:
            a0, b0 = clauses[c - 1]
            ok = (b0 - a0 == b - a and chars[a0:b0 + 1] == chars[a:b + 1]
                  and all(ZHONG in (tones[x], tones[y]) or tones[x] == tones[y]
                          for x, y in zip(range(a0, b0 + 1), range(a, b + 1))))
            return list(zip(range(a0, b0 + 1), range(a, b + 1))) if ok else []
    return []


def _skeleton_from_origin(origin: str, n: int) -> tuple[str, ...] | None:
    out, cur = [], []
    for ch in origin:
        if ch in "。？！":
            cur.append("。")
            out.append("".join(cur))
            cur = []
        elif ch in "，、；：":
            if not cur or cur[-1] != "*":
                return None
            cur.append("、" if ch == "、" else "，")
        elif not ch.isspace():
            cur.append("*")  # a Han character or a placeholder like □
    if cur or sum(s.count("*") for s in out) != n or any(s.startswith(("，", "、", "。")) for s in out):
        return None
    return tuple(out)



def render(form: Form) -> str:
    """○ 平, ● 仄, ◐ 中; a rhyme slot is followed by its group letter (A, B … for rhyme changes),
    and a 叠 slot (it repeats an earlier character) by 叠."""
    sym = {"平": "○", "仄": "●", ZHONG: "◐"}
    out, s = [], ""
    for cell in form.cells():
        if cell.kind is CellKind.NEWLINE:
            out.append(s)
            s = ""
        elif cell.kind is CellKind.MARK:
            s += cell.mark
        else:
            v = cell.slot
            s += sym[form.tones[v]] + (chr(ord("A") + form.rhyme[v]) if form.rhyme[v] >= 0 else "")
            s += "叠" if form.repeat_of(v) >= 0 else ""
    return "\n".join(out)


def rhyme_group_count(form: Form) -> int:
    return max(form.rhyme, default=-1) + 1

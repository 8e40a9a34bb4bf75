"""Characters the user fixes (`start`: the opening; `acrostic`: 藏头, the first character of each line
or clause) and the choice of a 词谱 variant that admits them (a theme only favours: tianci.ci.theme).

The default variant of a 词牌 is the one the corpus writes most; a user's opening may not fit it
(苏轼's 明月几时有 opens 水调歌头 with a 平 where the default variant wants 仄). So with no variant
asked for, the first form of `CiPu.forms` (default first, then the 词谱's order) that admits every
fixed character is used, and the choice is reported; when none does, the error names each variant
and the slot that refuses. Vocabulary is not a property of a variant: a character the model cannot
write is refused whichever variant is chosen (`check_vocabulary`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TianciError
from .cipai import CiPu, variant_hints
from .form import Form
from .tones import Phonology, is_han


class FixedCharsError(TianciError, ValueError):
    """`start` or `acrostic` that no form (or not the form asked for) admits; `param` names which."""


@dataclass(frozen=True)
class Misfit:
    """Why one form does not admit the fixed characters."""

    param: str    # "start" | "acrostic"
    reason: str   # about the slot, without naming the form: "'明' (平) at line 1 character 1, which must be 仄"
    allowed: str  # what would fit there


@dataclass(frozen=True)
class FormChoice:
    form: Form
    note: str = ""  # why a variant other than the default was taken ("" when the default was)
    fixed: tuple[tuple[int, str], ...] = ()  # (cell index, character) fixed by start / acrostic


def place(form: Form, phon: Phonology, start: str | None, acrostic: str | None
          ) -> tuple[dict[int, str], Misfit | None]:
    """cell index -> fixed character, or the first reason this form refuses them."""
    cells = form.cells()
    fixed: dict[int, str] = {}
    origin: dict[int, str] = {}
    if start:
        j = 0
        for n, ch in enumerate(start, 1):
            while j < len(cells) and is_han(ch) and not cells[j].is_char:
                j += 1  # the user types characters only: skip the pattern's punctuation
            if j >= len(cells):
                return fixed, Misfit("start", f"{start!r} is longer than the whole form ({form.n_chars} "
                                     f"characters)", f"at most {form.n_chars} characters")
            cell = cells[j]
            if not cell.is_char and ch not in cell.accepts():
                return fixed, Misfit("start", f"character {n} {ch!r} stands where the pattern puts "
                                     f"{cell.accepts()[:1]!r}", f"{cell.accepts()!r} there")
            if cell.is_char and not is_han(ch):
                return fixed, Misfit("start", f"{ch!r} (character {n}) stands at a character slot",
                                     "a Han character there")
            fixed[j], origin[j] = ch, "start"
            j += 1
    if acrostic:
        heads = form.line_starts()
        if len(acrostic) != len(heads):
            clauses = form.line_starts(clauses=True)
            if len(acrostic) != len(clauses):
                return fixed, Misfit("acrostic", f"{acrostic!r} has {len(acrostic)} characters but the form "
                                     f"has {len(heads)} lines ({len(clauses)} clauses)",
                                     f"{len(heads)} or {len(clauses)} characters")
            heads = clauses
        cell_of = {c.slot: j for j, c in enumerate(cells) if c.is_char}
        for n, (slot, ch) in enumerate(zip(heads, acrostic), 1):
            j = cell_of[slot]
            if j in fixed and fixed[j] != ch:
                return fixed, Misfit("acrostic", f"character {n} {ch!r} conflicts with start, which puts "
                                     f"{fixed[j]!r} there", f"{fixed[j]!r} as character {n}")
            fixed[j], origin[j] = ch, "acrostic"
    bus: dict[int, set[int]] = {}
    for j, ch in sorted(fixed.items()):
        cell = cells[j]
        if not cell.is_char:
            continue
        line, pos = form.where(cell.slot)
        tone = form.tones[cell.slot]
        if not phon.fits(ch, tone):
            known = "/".join(sorted(phon.tones(ch))) or "unknown tone"
            return fixed, Misfit(origin[j], f"{ch!r} ({known}) at line {line} character {pos}, which must be "
                                 f"{tone}", f"a {tone} character at line {line} character {pos}")
        g = form.rhyme[cell.slot]
        if g >= 0:
            have = phon.groups(ch, tone)
            new = have & bus.get(g, have)
            if not new:
                why = "no rhyme group is known for it" if not have else "it does not rhyme with the earlier rhyme"
                return fixed, Misfit(origin[j], f"{ch!r} cannot rhyme at line {line} character {pos} ({why})",
                                     f"a {tone} character that rhymes at line {line} character {pos}")
            bus[g] = new
    return fixed, None


def _label(form: Form) -> str:
    return f"variant {form.variant}" if form.variant is not None else "its corpus form"


def choose_form(cipu: CiPu | None, cipai: str | Form, phon: Phonology, variant: int | None = None,
                start: str | None = None, acrostic: str | None = None) -> FormChoice:
    """The form to compose: `cipai` itself when it is a Form, the asked-for variant, else the first
    form of `cipu.forms(cipai)` that admits `start` and `acrostic` (the default when nothing is fixed).
    Raises FixedCharsError naming the variants and the slots that refuse."""
    if isinstance(cipai, Form) or variant is not None:
        form = cipai if isinstance(cipai, Form) else _need(cipu).form(cipai, variant)
        fixed, why = place(form, phon, start, acrostic)
        if why is None:
            return FormChoice(form, "", tuple(sorted(fixed.items())))
        others = []
        if cipu is not None and form.source == "词谱":
            others = [f.variant for f in cipu.forms(form.name) if f.variant != form.variant
                      and place(f, phon, start, acrostic)[1] is None]
        value = start if why.param == "start" else acrostic
        msg = f"{why.param} {value!r} does not fit {form.name} {_label(form)}: {why.reason}"
        hints = variant_hints(form.name) if others else {}
        if others:
            msg += f"; variant(s) {', '.join(map(str, others))} admit it"
        raise FixedCharsError(msg, param=why.param, allowed=why.allowed, hints=hints)
    forms = _need(cipu).forms(cipai)
    misfits: list[tuple[Form, Misfit]] = []
    for i, form in enumerate(forms):
        fixed, why = place(form, phon, start, acrostic)
        if why is None:
            note = ""
            if i:
                asked = " and ".join(f"{p} {v!r}" for p, v in (("start", start), ("acrostic", acrostic)) if v)
                note = (f"{_label(form)} of {form.name}: the default ({_label(forms[0])}) does not admit "
                        f"{asked} ({misfits[0][1].reason})")
            return FormChoice(form, note, tuple(sorted(fixed.items())))
        misfits.append((form, why))
    by_reason: dict[str, list[Form]] = {}
    for form, why in misfits:
        by_reason.setdefault(why.reason, []).append(form)
    parts = []
    for reason, fs in by_reason.items():
        if fs[0].variant is None:
            parts.append(f"{_label(fs[0])}: {reason}")
        else:
            nums = ", ".join(str(v) for v in sorted(f.variant for f in fs))
            parts.append(f"{'variant' if len(fs) == 1 else 'variants'} {nums}: {reason}")
    param = misfits[0][1].param
    value = start if param == "start" else acrostic
    raise FixedCharsError(f"{param} {value!r} fits no form of {forms[0].name}: " + "; ".join(parts),
                          param=param, allowed=misfits[0][1].allowed)


def _need(cipu: CiPu | None) -> CiPu:
    assert cipu is not None, "a 词牌 given by name needs the 词谱 (CiPu)"
    return cipu


def check_vocabulary(fixed: tuple[tuple[int, str], ...], stoi: dict[str, int], start: str | None) -> dict[int, int]:
    """cell index -> token id; a fixed character the model's vocabulary lacks is refused."""
    out = {}
    for j, ch in fixed:
        if ch not in stoi:
            param = "start" if start and ch in start else "acrostic"
            raise FixedCharsError(f"{ch!r} is not in the model's vocabulary: it cannot be written", param=param,
                                  allowed="characters of the model's vocabulary")
        out[j] = stoi[ch]
    return out

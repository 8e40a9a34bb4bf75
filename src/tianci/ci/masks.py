"""The masks of constrained decoding (tianci.ci.compose): per tokenizer, which ids are Han, 平-able,
仄-able and in each 部 (`VocabTables`); per form, which ids each cell admits (`FormMasks`)."""

from __future__ import annotations

import torch

from ..errors import TianciError
from ..formpos import from_layout
from .form import CellKind, Form
from .tones import PING, ZE, ZHONG, Phonology, is_han

TONE_INDEX = {PING: 0, ZE: 1, ZHONG: 2}


class VocabTables:
    """Per tokenizer × phonology: which ids are Han, 平-able, 仄-able, in each 部 (per tone)."""

    def __init__(self, tokenizer, phon: Phonology):
        if getattr(tokenizer, "kind", "char") != "char":
            raise TianciError(f"compose needs a character-level tokenizer (this run's is "
                              f"{tokenizer.kind!r}): one BPE token can span several slots of the "
                              f"pattern; train with tokenizer=char", param="run",
                              allowed="a run trained with the char tokenizer")
        self.tok, self.phon = tokenizer, phon
        self.texts = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
        self.stoi = {t: i for i, t in enumerate(self.texts)}
        V = len(self.texts)
        # build as Python lists, convert once: per-element tensor writes cost ~µs each
        han, tone = [False] * V, [[False] * V for _ in range(3)]
        bu = [[[False] * V for _ in range(20)] for _ in range(3)]  # [tone, 部] (部 0 unused)
        for i, t in enumerate(self.texts):
            if not is_han(t):
                continue
            han[i] = tone[2][i] = True
            for tn, b in phon.lookup(t):
                tone[TONE_INDEX[tn]][i] = True
                if b:
                    bu[TONE_INDEX[tn]][b][i] = bu[2][b][i] = True
        self.han = torch.tensor(han, dtype=torch.bool)
        self.tone = torch.tensor(tone, dtype=torch.bool)  # 平-able, 仄-able, any
        self.bu = torch.tensor(bu, dtype=torch.bool)
        if not self.han.any():
            raise TianciError("the tokenizer's vocabulary has no Han character: nothing to compose with",
                              param="run", allowed="a run whose vocabulary has Han characters")
        self.any_bu = self.bu.any(dim=1)  # (3, V): has some rhyme group in that tone

    def one_hot(self, chars: str) -> torch.Tensor:
        m = torch.zeros(len(self.texts), dtype=torch.bool)
        for ch in chars:
            if ch in self.stoi:
                m[self.stoi[ch]] = True
        return m


class FormMasks:
    """The per-cell masks of one form over one vocabulary: (cells, V) booleans, built once."""

    def __init__(self, form: Form, vt: VocabTables):
        self.form, self.vt = form, vt
        self.cells = form.cells()
        self.strict = torch.zeros(len(self.cells), len(vt.texts), dtype=torch.bool)
        self.tone_only = torch.zeros_like(self.strict)
        for j, cell in enumerate(self.cells):
            if cell.is_char:
                t = TONE_INDEX[form.tones[cell.slot]]
                self.tone_only[j] = vt.tone[t]
                self.strict[j] = vt.tone[t] & vt.any_bu[t] if form.rhyme[cell.slot] >= 0 else vt.tone[t]
            else:
                m = vt.one_hot(cell.accepts())
                if not m.any():
                    want = "the newline" if cell.kind is CellKind.NEWLINE else " or ".join(cell.accepts())
                    raise TianciError(f"the vocabulary lacks {want}: the form of {form.name} "
                                      f"cannot be written with this tokenizer", param="run",
                                      allowed="a run whose vocabulary has the corpus punctuation")
                self.strict[j] = self.tone_only[j] = m
        self.newline = vt.one_hot("\n")
        # where each cell stands in its clause (row len(cells): the poem is done): a form model's input
        self.form_ids = from_layout("".join("*" if c.is_char else c.mark or "\n" for c in self.cells))
        # a character slot right before a mark or newline ends a clause
        self.final = [c.is_char and j + 1 < len(self.cells) and not self.cells[j + 1].is_char
                      for j, c in enumerate(self.cells)]

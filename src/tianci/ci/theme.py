"""Themes in 填词: `compose --theme 春雨,归舟` asks for words, and two things carry them into the poem.

- Conditioning: a run prepared with `--themes` was trained on title lines that name words of the
  poem below them (tianci.themes, `浣溪沙〈春雨 归舟〉 作者`); compose writes the user's words into
  the prompt's title line the same way (tianci.header). A run trained without themes gets the plain
  title line: its vocabulary has no theme marks (`Composer.themed`).
- Guidance (`ThemeGuide`), for every run: per sample, a logit bonus on the first character of
  each word the poem does not hold yet, growing as the poem runs out of room, and a larger one on a
  word's next character right after its previous one, so the word is written whole; a word once
  written gets no more. Added after the form's masks: a preference among what the form allows,
  never past it, so a word whose tones fit nowhere can stay missing. With `--candidates M`, a draft
  holding more of the words wins over a more fluent one holding fewer; a themed poem gets
  `sampling.THEME_CANDIDATES` drafts unless the caller asks for a number.
"""

from __future__ import annotations

import torch

from ..errors import ParameterError

THEME_BONUS = 2.0  # logits on a missing word's first character at the poem's start: ~7x its odds
THEME_RAMP = 2.0  # the first-character bonus grows to THEME_BONUS * (1 + THEME_RAMP) by the last slot
WORD_BONUS = 6.0  # logits on a word's next character right after its previous one: ~400x
MISSING_COST = 1.0  # judge score (nats/symbol scale) added per missing word when choosing among drafts


class ThemeGuide:
    """The per-sample theme bonus of one batch (`ConstrainedDecoder.row_hook` adds `row_bias(r)`)."""

    def __init__(self, vt, words: tuple[str, ...], rows: int, cells: int):
        self.words = tuple(w for w in words if any(c in vt.stoi and vt.han[vt.stoi[c]] for c in w))
        if not self.words:
            raise ParameterError("theme", ",".join(words), "Han characters of the model's vocabulary",
                                 "none of its characters can be written")
        self.stoi, self.V, self.cells = vt.stoi, len(vt.texts), max(1, cells)
        self.text = [""] * rows  # each sample's poem so far

    def advance(self, r: int, piece: str) -> None:
        self.text[r] += piece

    def row_bias(self, r: int, device) -> torch.Tensor:
        """(1, V) logits to add to sample r's next token (each row's hook builds only its own: all
        rows for every row cost rows² per step)."""
        text, bonus = self.text[r], {}
        first = THEME_BONUS * (1 + THEME_RAMP * min(1.0, len(text) / self.cells))
        for w in self.words:
            if w in text:
                continue
            k = next((k for k in range(len(w) - 1, 0, -1) if text.endswith(w[:k])), 0)
            i = self.stoi.get(w[k])
            if i is not None:
                bonus[i] = max(bonus.get(i, 0.0), WORD_BONUS if k else first)
        out = torch.zeros(1, self.V)
        if bonus:
            out[0, list(bonus)] = torch.tensor(list(bonus.values()))
        return out.to(device)

    def missing(self, text: str) -> int:
        return sum(w not in text for w in self.words)

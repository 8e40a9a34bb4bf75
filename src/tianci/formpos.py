"""Where the next token stands in its clause: the extra inputs of a form-aware model (GPTConfig.form="clause").

SongNet (Li et al., ACL 2020) gives a poetry model, at every position, symbols of the format it is
filling and of the position inside the sentence. Here every position t carries two ids about the
token the model is about to write, x[t+1] (the one its logits predict):

  remaining  the characters left in that token's clause, counting the token itself: 1 = it ends the
             clause, 0 = it is the clause's mark or a paragraph's newline; capped at REM_CAP (which
             reads "REM_CAP or more"); REM_UNKNOWN when not known
  end        what ends the clause: PAUSE (，、；：), STOP (。？！), NEWLINE (the paragraph break right
             after a mark), or UNKNOWN

The model adds an embedding of each to the token embedding, as it adds wpe (tianci.model). The two
sources of the ids are one function, `from_classes`, over token classes (SLOT, the marks, NEWLINE):

- training (`from_tokens`): the poem's own punctuation in the window the trainer reads from train.bin
  (x plus the last target: position t looks ahead to the clause's mark). Vectorised (a reverse cummin
  finds each position's next mark, a cumsum counts the slots before it), so it costs nothing next to
  the model. Two cases have no form and get UNKNOWN:
  * a clause still open at the end of the window (its mark is past the block): its length is not in
    the window, and guessing would teach the model a wrong count;
  * text outside poems -- the title line (词牌, author, a genre tag or theme words), the blank line
    between poems, a paragraph without a final mark: a run of text that reaches a newline with no
    mark before it is not a clause. So nothing needs to know where a poem starts, and a window may
    begin anywhere, even in the middle of a title.
- composing (`from_layout`): the same function over the pattern the composer fills (one cell per
  token: '*' a character slot, the pattern's marks, '\\n' per paragraph), so the ids fed while
  composing are the ids training would read off the finished poem (tests/test_formpos.py checks it
  on composed poems).

Plain sampling (`tianci sample`, the completions API) has no form: every position is UNKNOWN. So the
model also learns to write without one, training drops a row's ids to UNKNOWN with probability DROP.

A form model's val loss is not comparable with a plain model's: it is conditioned on the form (the
marks are nearly free). Compare them with `tianci compose-eval` (docs/compose.md).
"""

from __future__ import annotations

import torch

from .errors import ParameterError

SLOT, PAUSE, STOP, NEWLINE = 0, 1, 2, 3  # token classes; PAUSE, STOP, NEWLINE are also the `end` ids
UNKNOWN = 0  # the `end` id when there is no form
END_IDS = 4  # UNKNOWN, PAUSE, STOP, NEWLINE
PAUSE_MARKS, STOP_MARKS = "，、；：", "。？！"
REM_CAP = 15  # remaining counts above this read as REM_CAP ("15 or more")
REM_UNKNOWN = REM_CAP + 1
REM_IDS = REM_CAP + 2  # 0..REM_CAP and REM_UNKNOWN
DROP = 0.1  # probability that a training row is shown no form (so plain sampling is in distribution)


def char_class(ch: str) -> int:
    if ch == "\n":
        return NEWLINE
    return PAUSE if ch in PAUSE_MARKS else STOP if ch in STOP_MARKS else SLOT


def token_classes(tokenizer) -> torch.Tensor:
    """(V,) uint8: the class of every token id. Only character tokens have one class each."""
    if getattr(tokenizer, "kind", "char") != "char":
        raise ParameterError("form", "clause", "none with a BPE tokenizer",
                             why="a BPE token can hold a clause's end and the next clause's start")
    return torch.tensor([char_class(tokenizer.token_text(i)) for i in range(tokenizer.vocab_size)],
                        dtype=torch.uint8)


def from_classes(c: torch.Tensor) -> torch.Tensor:
    """c (B, L) token classes -> (B, L-1, 2) long: [remaining, end] at positions 0..L-2, each about
    the token after it."""
    B, L = c.shape
    pos = torch.arange(L, device=c.device).expand(B, L)
    mark = c != SLOT
    # the first mark or newline at or after each index (L: none in the window)
    nxt = torch.where(mark, pos, torch.full_like(pos, L)).flip(1).cummin(1).values.flip(1)
    slots = torch.nn.functional.pad((c == SLOT).long().cumsum(1), (1, 0))  # slots[:, k]: in c[:, :k]
    b = nxt[:, 1:]  # position t looks at tokens t+1 .. its clause's end
    rem = slots.gather(1, b) - slots[:, 1:L]
    end = c.gather(1, b.clamp(max=L - 1)).long()
    # a newline ends a paragraph only right after its mark; a line that reaches it without one
    # (a title, the author, the blank line) is not a clause
    after_mark = (c[:, :-1] == PAUSE) | (c[:, :-1] == STOP)
    known = (b < L) & ((end != NEWLINE) | ((rem == 0) & after_mark))
    end = torch.where(known, end, torch.full_like(end, UNKNOWN))
    rem = torch.where(known, rem.clamp(max=REM_CAP), torch.full_like(rem, REM_UNKNOWN))
    return torch.stack([rem, end], dim=-1)


def from_tokens(window: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """window (B, T+1) token ids (a negative id, an ignored target, counts as a slot) -> (B, T, 2)."""
    c = classes[window.clamp(min=0)]
    return from_classes(torch.where(window < 0, torch.zeros_like(c), c))


def for_training(idx: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor, training: bool) -> torch.Tensor:
    """The ids a training batch carries in its own text: targets is idx shifted by one (its last
    column is the token after the window). In training mode each row is UNKNOWN with probability DROP."""
    form = from_tokens(torch.cat([idx, targets[:, -1:]], dim=1), classes)
    if training:
        drop = torch.rand(form.size(0), 1, device=form.device) < DROP  # (B, 1): one draw per row
        form = torch.where(drop[..., None], unknown(*form.shape[:2], device=form.device), form)
    return form


def from_layout(layout: str) -> torch.Tensor:
    """(len(layout) + 1, 2): the ids before each cell of a pattern ('*' a character slot, marks,
    '\\n'), the row before cell 0 being the newline that ends the title line; the last row (the
    poem is done) is UNKNOWN, as after the poem's last newline in the corpus."""
    c = torch.tensor([[NEWLINE] + [SLOT if ch == "*" else char_class(ch) for ch in layout]], dtype=torch.uint8)
    return torch.cat([from_classes(c)[0], unknown(1, 1)[0]])


def unknown(B: int, T: int, device=None) -> torch.Tensor:
    """(B, T, 2) ids of no form."""
    return torch.tensor([REM_UNKNOWN, UNKNOWN], device=device).expand(B, T, 2)


def uses_form(model) -> bool:
    return getattr(getattr(model, "config", None), "form", "none") != "none"


def attach(model, tokenizer) -> None:
    """Give a form model its tokenizer's token classes (GPT.form_classes): the trainer and Run.load do."""
    if uses_form(model):
        model.form_classes.copy_(token_classes(tokenizer))

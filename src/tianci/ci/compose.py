"""填词 by constrained decoding: the model supplies fluency, the decoder guarantees form, tone and rhyme.

The prompt is the corpus format: "\\n\\n" then the title line `词牌 作者` (tianci.header). With no author the
model writes one (1–4 Han characters, then a newline). Then every token is one cell of the form
(`Form.cells()`): a character slot, a punctuation mark or a paragraph's newline. A `logits_hook`
masks the logits of each row before `tianci.generate.generate` samples:

  character slot  Han characters of the vocabulary whose tone fits (平: 平 or either-tone chars,
                  仄: 仄 ones, 中: any Han); a rhyme slot also needs a reading in the rhyme group
                  (词林正韵 部) chosen at the group's first rhyme, and no character already used as a
                  rhyme of that group; the first rhyme may take any 部 the vocabulary can continue.
  punctuation     the pattern's marks (，/、 inside a paragraph, 。 at its end)
  newline         "\\n" exactly where a paragraph ends; the poem ends after the last one.

Because generate() is lazy, the consumer sees token t (and updates the rhyme state) before the hook
is called for step t+1. Polyphonic rhymes keep every 部 they could belong to; the set narrows as
more rhymes are written. When the constraints leave nothing (tiny vocabularies), the decoder backs
off in order — allow a repeated rhyme, relax the tone, relax the rhyme, any Han character — and
reports each backoff; it never hangs. A theme (`theme="春雨,归舟"`) is written into the title line of a
run trained with themes and guided into the poem by a logit bonus (tianci.ci.theme), within the form.
A form model (GPTConfig.form="clause") is also told, before each cell, how many characters its clause has
left and what ends it (FormMasks.form_ids, tianci.formpos): the same ids training reads off a poem's text.
Masks are boolean tensors built once per (tokenizer, form) and held by a `Composer`, which the caller keeps to reuse them (the CLI per command, the server per run).
Only character-level tokenizers are supported: a BPE token spans several slots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cipai import CiPu
from ..errors import ParameterError, TianciError
from ..formpos import uses_form
from ..sampling import COMPOSE_SAMPLING as S, default_candidates
from ..header import THEME_CLOSE, THEME_OPEN, Header, check_theme
from .fixed import FormChoice, check_vocabulary, choose_form
from .form import Form
from .masks import TONE_INDEX, FormMasks, VocabTables
from .theme import MISSING_COST, ThemeGuide
from .tones import Phonology, bu_name, load_phonology

AUTHOR_MAX = 4  # characters the model may write as the author's name


@dataclass
class Backoff:
    sample: int
    line: int  # 1-based paragraph
    char: int  # 1-based character in the paragraph
    relaxed: str  # "repeat rhyme" | "tone" | "rhyme" | "tone+rhyme" | "everything"

    def __str__(self) -> str:
        return f"sample {self.sample}: line {self.line} char {self.char}: relaxed {self.relaxed}"


@dataclass
class ComposeResult:
    text: str  # the poem: paragraphs joined by "\n"
    lines: list[str]
    title: str
    author: str
    form: Form
    rhyme: list[str]  # per rhyme group: the 部 used ("第七部", "第一部/第二部" when still ambiguous)
    backoffs: list[Backoff] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # generated ids (author, if written, then poem)
    seconds: float = 0.0
    note: str = ""  # why this form was chosen when it is not the default (tianci.ci.fixed)
    prompt_tokens: int = 0  # the title line the model was prompted with
    theme: tuple[str, ...] = ()  # the words asked for

    @property
    def theme_found(self) -> list[str]:
        """The theme words the poem holds."""
        return [w for w in self.theme if w in self.text]

    @property
    def variant(self) -> int | None:
        return self.form.variant


class Composer:
    """What composing needs besides the model, built once and held by the caller: the tokenizer's
    vocabulary tables and the masks of every form used so far (keyed by the form itself: forms are
    frozen values), plus the 词谱 to choose forms from. Not thread-safe for building new masks; a
    server holds one per run and builds under its scheduler.

    Craft, when the 词谱 comes with a corpus: a clause may not end on a character real ci almost
    never ends one with (不, 一, 自, 欲 …; `judge.ClauseEnds`) unless nothing else fits. `judge`
    (a `judge.Judge`) lets `compose_batch(candidates=M)` keep the best of M drafts per poem."""

    MAX_FORMS = 256  # masks kept (each is cells × V booleans: ~100 × 6k = 0.6 MB)

    def __init__(self, tokenizer, phon: Phonology | None = None, cipu: CiPu | None = None,
                 judge=None, clause_ends: bool = True):
        from .judge import ClauseEnds, train_texts

        self.cipu = cipu
        self.phon = phon or (cipu.phon if cipu is not None and cipu.phon is not None else None) or load_phonology()
        self.vocab = VocabTables(tokenizer, self.phon)
        self._masks: dict[Form, FormMasks] = {}
        self.judge = judge
        ends = judge.ends if judge is not None else (
            ClauseEnds(train_texts(cipu.corpus)) if clause_ends and cipu is not None and cipu.corpus is not None
            else None)
        self.no_clause_end = self.vocab.one_hot("".join(ends.rare)) if ends is not None and clause_ends else None
        # trained with theme words in its title lines (`prepare --themes`): only they bring the marks
        self.themed = THEME_OPEN in self.vocab.stoi and THEME_CLOSE in self.vocab.stoi

    def masks(self, form: Form) -> FormMasks:
        fm = self._masks.get(form)
        if fm is None:
            if len(self._masks) >= self.MAX_FORMS:
                self._masks.clear()
            fm = self._masks[form] = FormMasks(form, self.vocab)
        return fm

    def choose(self, cipai: str | Form, variant: int | None = None, start: str | None = None,
               acrostic: str | None = None) -> FormChoice:
        """The form for this request (a variant that admits `start`/`acrostic`; see tianci.ci.fixed)."""
        if isinstance(cipai, str) and self.cipu is None:
            self.cipu = CiPu.load(phon=self.phon)
        return choose_form(self.cipu, cipai, self.phon, variant, start, acrostic)


@dataclass
class RowState:
    """One sample's progress through the form."""

    author_phase: bool  # still writing the author's name
    author_text: str = ""
    cell: int = 0  # index into FormMasks.cells of the next token
    bus: dict[int, set[int]] = field(default_factory=dict)  # rhyme group -> 部 still possible
    used: dict[int, set[int]] = field(default_factory=dict)  # rhyme group -> token ids used as rhymes
    tokens: list[int] = field(default_factory=list)
    slot_tok: dict[int, int] = field(default_factory=dict)  # character slot -> token written there (for 叠)


class ConstrainedDecoder:
    """The state machine behind the logits hook; one RowState per sample."""

    def __init__(self, fm: FormMasks, n: int, author_phase: bool, forced: dict[int, int],
                 no_clause_end: torch.Tensor | None = None, guide: ThemeGuide | None = None):
        self.fm, self.vt, self.form = fm, fm.vt, fm.form
        self.rows = [RowState(author_phase) for _ in range(n)]
        self.forced = forced
        self.no_clause_end = no_clause_end  # (V,) characters a clause should not end on, or None
        self.guide = guide  # the theme's bonus in the poem (tianci.ci.theme), or None
        self.backoffs: list[Backoff] = []

    def done(self) -> bool:
        return all(r.cell >= len(self.fm.cells) for r in self.rows)

    def _only(self, tok: int) -> torch.Tensor:
        m = torch.zeros_like(self.vt.han)
        m[tok] = True
        return m

    def mask(self, r: int) -> torch.Tensor:
        m = self._legal(r)
        row = self.rows[r]
        if (self.no_clause_end is not None and not row.author_phase and row.cell < len(self.fm.cells)
                and self.fm.final[row.cell] and row.cell not in self.forced):
            craft = m & ~self.no_clause_end
            if craft.any():  # a preference, never at the cost of the form
                return craft
        return m

    def _legal(self, r: int) -> torch.Tensor:
        row, vt = self.rows[r], self.vt
        if row.author_phase:
            n = len(row.author_text)
            return vt.han if n == 0 else self.fm.newline if n >= AUTHOR_MAX else vt.han | self.fm.newline
        if row.cell >= len(self.fm.cells):
            return self.fm.newline  # finished rows wait for the others
        j = row.cell
        if j in self.forced:
            return self._only(self.forced[j])
        cell = self.fm.cells[j]
        if cell.is_char and self.form.repeat_of(cell.slot) in row.slot_tok:  # 叠: the same character again
            return self._only(row.slot_tok[self.form.repeat_of(cell.slot)])
        strict = self.fm.strict[j]
        if not cell.is_char or self.form.rhyme[cell.slot] < 0:
            if strict.any():
                return strict
            return self._backoff(r, cell.slot, "tone", vt.han)
        g, t = self.form.rhyme[cell.slot], TONE_INDEX[self.form.tones[cell.slot]]
        bus = row.bus.get(g)
        rhyme = vt.bu[t, sorted(bus)].any(dim=0) if bus else vt.any_bu[t]
        unused = torch.ones_like(vt.han)
        if row.used.get(g):
            unused[list(row.used[g])] = False
        for relaxed, m in (("", strict & rhyme & unused), ("repeat rhyme", strict & rhyme),
                           ("tone", vt.han & rhyme), ("rhyme", self.fm.tone_only[j]),
                           ("tone+rhyme", vt.han)):
            if m.any():
                return self._backoff(r, cell.slot, relaxed, m) if relaxed else m
        raise AssertionError("VocabTables guarantees a Han character")

    def _backoff(self, r: int, slot: int, relaxed: str, m: torch.Tensor) -> torch.Tensor:
        line, pos = self.form.where(slot)
        self.backoffs.append(Backoff(r, line, pos, relaxed))
        return m

    def advance(self, r: int, tok: int) -> str:
        """Record row r's sampled token; return the text it adds (for streaming)."""
        row, vt = self.rows[r], self.vt
        text = vt.texts[tok]
        if row.author_phase:
            if text == "\n":
                row.author_phase = False
            else:
                row.author_text += text
            row.tokens.append(tok)
            return text
        if row.cell >= len(self.fm.cells):
            return ""
        cell = self.fm.cells[row.cell]
        if cell.is_char:
            row.slot_tok[cell.slot] = tok
            g = self.form.rhyme[cell.slot]
            if g >= 0:
                have = vt.phon.groups(text, self.form.tones[cell.slot])
                old = row.bus.get(g)
                new = have if old is None else have & old
                if new:
                    row.bus[g] = new
                row.used.setdefault(g, set()).add(tok)
        row.cell += 1
        row.tokens.append(tok)
        if self.guide is not None:
            self.guide.advance(r, text)
        return text

    def form_ids(self, step: int) -> torch.Tensor:
        """(rows, 2): where each row's next token stands in its clause, from the pattern (a form
        model's input, tianci.formpos); unknown while the model writes the author, as in the corpus."""
        return torch.stack([self.row_form(r)(step) for r in range(len(self.rows))])

    def row_form(self, r: int):
        """Row r's form ids alone, step -> (2,) (the batched engine asks each row on its own)."""
        def ids(step: int) -> torch.Tensor:
            row, n = self.rows[r], len(self.fm.cells)
            return self.fm.form_ids[n if row.author_phase else min(row.cell, n)]
        return ids

    def hook(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        return torch.cat([self.row_hook(r)(logits[r:r + 1], step) for r in range(len(self.rows))])

    def row_hook(self, r: int):
        """Row r's hook alone, on its (1, V) logits: the batched engine steps each row on its own."""
        def hook(logits: torch.Tensor, step: int) -> torch.Tensor:
            logits = logits.masked_fill(~self.mask(r).to(logits.device), float("-inf"))
            if self.guide is not None and not self.rows[r].author_phase:  # the author's name is not themed
                logits = logits + self.guide.row_bias(r, logits.device).to(logits.dtype)
            return logits
        return hook


def _encode_loose(vt: VocabTables, text: str) -> list[int]:
    """The prompt's characters the vocabulary has (a title character it lacks is just dropped)."""
    return [vt.stoi[c] for c in text if c in vt.stoi]


def compose_batch(model, tokenizer, cipai: str | Form, n: int = 1, *, start: str | None = None,
                  acrostic: str | None = None, temperature: float = S.temperature, top_k: int | None = S.top_k,
                  top_p: float | None = S.top_p, min_p: float | None = S.min_p,
                  presence_penalty: float = S.presence_penalty, frequency_penalty: float = S.frequency_penalty,
                  seed: int | None = None, author: str | None = None, on_text=None, cipu: CiPu | None = None,
                  phon: Phonology | None = None, variant: int | None = None, composer: Composer | None = None,
                  candidates: int | None = None, theme: str | None = None, engine=None,
                  cancelled=None) -> list[ComposeResult]:
    """`n` poems to one form, decoded together as one batch. With candidates=M > 1 (needs a
    composer with a judge), n × M drafts are decoded in one batch and each poem is the best of its
    M by the judge (`judge.Judge.scores`); candidates=None: CRITIC_CANDIDATES when the judge has the run's
    critic, else 1, or THEME_CANDIDATES for a themed poem when the composer has a judge (`sampling.default_candidates`). engine: decode the rows in a `tianci.engine.Engine`'s
    batches instead (the server), each on its own (`batched.run_rows`; `cancelled`, a threading.Event,
    stops them). See `compose`."""
    t0 = time.perf_counter()
    if n < 1:
        raise ParameterError("n", n, ">= 1", "the number of poems to compose")
    composer = composer or Composer(tokenizer, phon, cipu)
    judge = composer.judge
    candidates = default_candidates(candidates, theme, judge is not None, judge is not None and judge.critic is not None)
    if candidates < 1:
        raise ParameterError("candidates", candidates, ">= 1")
    assert composer.vocab.tok is tokenizer, "a Composer serves the tokenizer it was built for"
    if candidates > 1 and composer.judge is None:
        raise TianciError("choosing among candidates needs a judge: the corpus the run was trained on",
                          param="candidates", allowed="1 without a corpus")
    choice = composer.choose(cipai, variant, start, acrostic)
    form = choice.form
    fm = composer.masks(form)
    forced = check_vocabulary(choice.fixed, fm.vt.stoi, start)
    author = author.strip() if author else None
    words = check_theme(theme) if theme else ()
    head = Header(form.title, theme=words if composer.themed else ())  # a run never trained on themes: the plain line
    ids = _encode_loose(fm.vt, "\n\n" + head.prompt() + (f"{author}\n" if author else ""))
    rows = n * candidates
    guide = ThemeGuide(fm.vt, words, rows, len(fm.cells)) if words else None
    dec = ConstrainedDecoder(fm, rows, author is None, forced, composer.no_clause_end, guide)
    steps = len(fm.cells) + (AUTHOR_MAX + 1 if author is None else 0)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,  # after the masks
                    presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)  # before them
    if engine is None:
        _decode(model, ids, dec, steps, seed, on_text if candidates == 1 else None, **sampling)
    else:
        _decode_on(engine, ids, dec, steps, seed, on_text if candidates == 1 else None, cancelled, **sampling)
    assert dec.done(), "the step budget covers every cell"
    out = []
    n_groups = max(form.rhyme, default=-1) + 1
    for r, row in enumerate(dec.rows):
        body = row.tokens[len(row.tokens) - len(fm.cells):]
        text = "".join(fm.vt.texts[t] for t in body).rstrip("\n")
        rhyme = ["/".join(bu_name(b) for b in sorted(row.bus[g])) if row.bus.get(g) else "-"
                 for g in range(n_groups)]
        out.append(ComposeResult(text, text.split("\n"), form.title, author or row.author_text, form,
                                 rhyme, [b for b in dec.backoffs if b.sample == r], row.tokens,
                                 time.perf_counter() - t0, choice.note, len(ids), words))
    if candidates == 1:
        return out
    scores = composer.judge.scores([r.text for r in out], form.rhyme, form.repeat)
    if guide is not None:  # a draft missing a theme word loses to one holding it, whatever its fluency
        scores = [sc + MISSING_COST * guide.missing(r.text) for sc, r in zip(scores, out)]
    best = [min(range(i * candidates, (i + 1) * candidates), key=scores.__getitem__) for i in range(n)]
    for i, b in enumerate(best):
        for bo in out[b].backoffs:
            bo.sample = i
    if on_text is not None:  # drafts are not streamed: the chosen poem goes out whole
        on_text(("" if author else out[best[0]].author + "\n") + out[best[0]].text + "\n")
    return [out[b] for b in best]


def _decode(model, ids: list[int], dec: ConstrainedDecoder, steps: int, seed: int | None, on_text,
            **sampling) -> None:
    """compose_batch's rows as one `generate` batch with one generator; row 0's text to on_text."""
    from ..generate import generate

    device = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"
    idx = torch.tensor([ids] * len(dec.rows), dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()  # nondeterministic, without touching the global RNG
    else:
        gen.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for tok in generate(model, idx, steps, generator=gen, logits_hook=dec.hook,
                                form_hook=dec.form_ids if uses_form(model) else None, **sampling):
                for r, t in enumerate(tok.tolist()):
                    piece = dec.advance(r, t)
                    if r == 0 and on_text is not None and piece:
                        on_text(piece)
                if dec.done():
                    break
    finally:
        model.train(was_training)


def _decode_on(engine, ids: list[int], dec: ConstrainedDecoder, steps: int, seed: int | None, on_text,
               cancelled, **sampling) -> None:
    """The same rows in a batched engine's batches (the server's), each row on its own with its own
    generator (`batched.run_rows`); row 0's text to on_text, in this thread."""
    from ..batched import run_rows

    def advance(r: int, tok: int):  # on the engine's thread: row r's next mask depends on it
        piece = dec.advance(r, tok)
        return dec.rows[r].cell >= len(dec.fm.cells), piece if r == 0 and piece and on_text else None
    for piece in run_rows(engine, ids, len(dec.rows), steps, seed, advance, dec.row_hook, cancelled=cancelled,
                          row_form=dec.row_form if uses_form(engine.model) else None, **sampling):
        on_text(piece)


def compose(model, tokenizer, cipai: str | Form, *, start: str | None = None,
            acrostic: str | None = None, temperature: float = S.temperature, top_k: int | None = S.top_k,
            top_p: float | None = S.top_p, min_p: float | None = S.min_p,
            presence_penalty: float = S.presence_penalty, frequency_penalty: float = S.frequency_penalty,
            seed: int | None = None, author: str | None = None, on_text=None, cipu: CiPu | None = None,
            phon: Phonology | None = None, variant: int | None = None, composer: Composer | None = None,
            candidates: int | None = None, theme: str | None = None, engine=None, cancelled=None) -> ComposeResult:
    """Compose one ci to `cipai` (a name, alias or pinyin, or a ready `Form`).

    start: fixes the opening characters; acrostic: the first character of each line (or clause), 藏头;
    with a name and no `variant`, the first 词谱 variant that admits them is used (`result.note` says
    why when it is not the default). theme: words to write about (tianci.ci.theme). author: written into
    the prompt (None: the model writes one). on_text(str) receives the text as it is decoded.
    composer: reuse one `Composer` across calls (it holds the vocabulary tables and masks); else one
    is built from tokenizer, cipu and phon (which default to TIANCI_CIPU_SOURCE / TIANCI_RHYME_SOURCE,
    else upstream)."""
    return compose_batch(model, tokenizer, cipai, 1, start=start, acrostic=acrostic,
                         temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed, author=author,
                         on_text=on_text, cipu=cipu, phon=phon, variant=variant, composer=composer,
                         candidates=candidates, theme=theme, engine=engine, cancelled=cancelled)[0]

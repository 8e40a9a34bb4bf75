"""How good is 填词? Compliance, fluency and novelty of composed ci, for the most common 词牌.

Everything is measured by re-reading the text, never from the decoder's state:
- form: the right number of paragraphs, each with the skeleton's length, Han characters at character
  slots and an accepted mark (，/、 for a pause, 。 at the end) at punctuation slots — must be 100%;
- tone: share of the pattern's 平/仄 (non-中) positions whose character has a fitting reading;
- rhyme: per rhyme group the 部 shared by most of its rhyme positions (readings of the slot's tone);
  share of rhyme positions in it;
- fluency: mean NLL per token (= per character, char tokenizer) of the poem (paragraphs and
  newlines, after the title line) under the same model *without* constraints, next to the same for
  real held-out poems (poems.jsonl split == "val") of that 词牌;
- novelty: the longest substring of the poem that occurs in the training poems; ≥ 8 is flagged.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .cipai import CiPu, Form, allowed_marks
from .corpus_stats import CorpusStats
from .tones import PING, ZE, Phonology, is_han

COPY_FLAG = 8
SKIP = {"失调名"}  # "tune name lost": a bucket of fragments, not a form


@dataclass
class PoemCheck:
    form_ok: bool
    tone_hits: int = 0
    tone_total: int = 0
    rhyme_hits: int = 0
    rhyme_total: int = 0
    problem: str = ""


def check_poem(text: str, form: Form, phon: Phonology) -> PoemCheck:
    """Independent checker: re-reads `text` (paragraphs separated by newlines) against `form`."""
    lines = text.strip("\n").split("\n")
    if len(lines) != len(form.lines):
        return PoemCheck(False, problem=f"{len(lines)} lines, the form has {len(form.lines)}")
    chars = []
    for li, (line, sk) in enumerate(zip(lines, form.lines), 1):
        if len(line) != len(sk):
            return PoemCheck(False, problem=f"line {li} has {len(line)} characters, the form {len(sk)}")
        for i, (ch, want) in enumerate(zip(line, sk), 1):
            ok = is_han(ch) if want == "*" else ch in allowed_marks(want)
            if not ok:
                return PoemCheck(False, problem=f"line {li} position {i}: {ch!r} where {want!r} belongs")
            if want == "*":
                chars.append(ch)
    c = PoemCheck(True)
    for ch, tone in zip(chars, form.tones):
        if tone in (PING, ZE):
            c.tone_total += 1
            c.tone_hits += phon.fits(ch, tone)
    for g in range(max(form.rhyme, default=-1) + 1):
        pos = [i for i, r in enumerate(form.rhyme) if r == g]
        sets = [phon.groups(chars[i], form.tones[i]) for i in pos]
        best = max((sum(b in s for s in sets) for b in set().union(*sets)), default=0)
        c.rhyme_total += len(pos)
        c.rhyme_hits += best
    return c


@torch.no_grad()
def nll_per_token(model, tokenizer, prompt: str, body: str) -> float:
    """Mean NLL (nats) of body's tokens given prompt + the preceding body, no constraints."""
    p = tokenizer.encode(prompt, errors="skip")
    b = tokenizer.encode(body, errors="skip")
    ids = p + b
    block = getattr(getattr(model, "config", None), "block_size", len(ids))
    ids = ids[-(block + 1):]  # a poem longer than the context: score its last block_size tokens
    nb = min(len(b), len(ids) - 1)
    dev = next(model.parameters()).device
    x = torch.tensor([ids[:-1]], device=dev)
    y = torch.tensor([ids[1:]], device=dev)
    logits, _ = model(x)
    loss = F.cross_entropy(logits[0, -nb:].float(), y[0, -nb:], reduction="mean")
    return float(loss)


def longest_copy(text: str, train_text: str) -> int:
    """Length of the longest substring of `text` occurring in train_text (greedy, O(len) searches)."""
    best = 0
    for i in range(len(text)):
        while i + best < len(text) and text[i:i + best + 1] in train_text:
            best += 1
    return best


def top_cipai(cp: CiPu, top: int) -> list[str]:
    rows = [r for r in cp.listing() if r[0] not in SKIP and r[3] > 0]
    return [r[0] for r in rows[:top]]


def evaluate(model, tokenizer, cp: CiPu, corpus: CorpusStats, *, k: int = 3, top: int = 30,
             seed: int = 0, temperature: float = 0.8, top_p: float | None = 0.95, max_real: int = 10,
             log=None) -> dict:
    from .compose import compose_batch

    train_text = "\n\n".join("\n".join(p.paragraphs) for p in corpus.poems if p.split != "val")
    rows = []
    for n, name in enumerate(top_cipai(cp, top)):
        t0 = time.perf_counter()
        form = cp.form(name)
        res = compose_batch(model, tokenizer, form, k, seed=seed + n, temperature=temperature,
                            top_p=top_p, cipu=cp, phon=cp.phon)
        samples = []
        for r in res:
            c = check_poem(r.text, form, cp.phon)
            nll = nll_per_token(model, tokenizer, f"\n\n{r.title} {r.author}\n", r.text + "\n")
            samples.append({"author": r.author, "text": r.text, "rhyme": r.rhyme, "check": asdict(c),
                            "nll": nll, "longest_copy": longest_copy(r.text, train_text),
                            "backoffs": [str(b) for b in r.backoffs]})
        ent = cp.resolve(name)
        real = [corpus.poems[i] for t in ent.titles for i in corpus.by_title.get(t, [])
                if corpus.poems[i].split == "val"][:max_real]
        real_nll = [nll_per_token(model, tokenizer, f"\n\n{p.title} {p.author}\n", "\n".join(p.paragraphs) + "\n")
                    for p in real]
        row = {"cipai": name, "source": form.source, "variant": form.variant, "corpus_count": form.corpus_count,
               "form_ok": sum(s["check"]["form_ok"] for s in samples) / k,
               "tone": _ratio(samples, "tone"), "rhyme": _ratio(samples, "rhyme"),
               "nll_gen": sum(s["nll"] for s in samples) / k,
               "nll_real": sum(real_nll) / len(real_nll) if real_nll else math.nan, "n_real": len(real_nll),
               "longest_copy": max(s["longest_copy"] for s in samples),
               "copies_ge8": sum(s["longest_copy"] >= COPY_FLAG for s in samples),
               "backoffs": sum(len(s["backoffs"]) for s in samples),
               "seconds": time.perf_counter() - t0, "samples": samples}
        rows.append(row)
        if log:
            log(format_row(row))
    return {"k": k, "top": top, "seed": seed, "temperature": temperature, "top_p": top_p,
            "per_cipai": rows, "overall": _overall(rows)}


def _ratio(samples, what: str) -> float:
    hits = sum(s["check"][f"{what}_hits"] for s in samples)
    total = sum(s["check"][f"{what}_total"] for s in samples)
    return hits / total if total else 1.0


def _overall(rows) -> dict:
    if not rows:
        return {}
    n = sum(len(r["samples"]) for r in rows)
    ss = [s for r in rows for s in r["samples"]]
    real = [r for r in rows if r["n_real"]]
    return {"samples": n, "form_ok": sum(s["check"]["form_ok"] for s in ss) / n,
            "tone": _ratio(ss, "tone"), "rhyme": _ratio(ss, "rhyme"),
            "nll_gen": sum(s["nll"] for s in ss) / n,
            "nll_real": (sum(r["nll_real"] * r["n_real"] for r in real) / sum(r["n_real"] for r in real)
                         if real else math.nan),
            "longest_copy": max(s["longest_copy"] for s in ss),
            "copies_ge8": sum(s["longest_copy"] >= COPY_FLAG for s in ss),
            "backoffs": sum(len(s["backoffs"]) for s in ss)}


HEADER = f"{'词牌':<10}{'form':>6}{'tone':>7}{'rhyme':>7}{'NLL gen':>9}{'NLL real':>9}{'copy':>6}{'≥8':>4}{'backoff':>8}"


def format_row(r: dict, name: str | None = None) -> str:
    name = name or r["cipai"]
    pad = 10 - sum(2 if is_han(c) else 1 for c in name) // 1
    return (f"{name}{' ' * max(pad, 1)}{r['form_ok']:>6.0%}{r['tone']:>7.1%}{r['rhyme']:>7.1%}"
            f"{r['nll_gen']:>9.3f}{r['nll_real']:>9.3f}{r['longest_copy']:>6d}{r['copies_ge8']:>4d}{r['backoffs']:>8d}")


def format_table(report: dict) -> str:
    lines = [HEADER] + [format_row(r) for r in report["per_cipai"]]
    if report.get("overall"):
        lines.append(format_row(report["overall"], "ALL"))
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    Path(path).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

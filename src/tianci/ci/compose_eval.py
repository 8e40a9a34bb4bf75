"""How good is 填词? An honest measure of composed ci against real held-out ci, for the most common 词牌.

Everything is measured by re-reading the text, never from the decoder's state, and nothing is scored
by the model that wrote it:
- form: the right number of paragraphs, each with the skeleton's length, Han characters at character
  slots and an accepted mark (，/、 for a pause, 。 at the end) at punctuation slots — must be 100%;
- tone: share of the pattern's 平/仄 (non-中) positions whose character has a fitting reading;
- rhyme: per rhyme group the 部 shared by most of its rhyme positions (readings of the slot's tone);
  share of rhyme positions in it;
- machine Turing test (the headline): a classifier (character 1–3-gram TF-IDF + logistic regression,
  stratified 5-fold cross-validation) told to separate composed poems from real held-out poems
  (poems.jsonl split == "val"), equal numbers of each per 词牌, punctuation reduced to one mark;
  ROC AUC 0.5 = indistinguishable; the n-grams that most give each side away;
- judge fluency: nats per symbol under a Kneser–Ney character 5-gram trained on the train split
  (`tianci.ci.judge`), composed next to real;
- craft, composed next to real: broken clauses (ending on a character real ci almost never ends a
  clause with), distinct characters per poem, reduplication (AA pairs), repeated rhyme characters;
- novelty: the longest substring of the poem that occurs in the training poems; ≥ 8 is flagged.
The generating model's own NLL of its poems is kept in the JSON as `self_nll` (it favours its own
samples, so it is no measure of quality).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..sampling import COMPOSE_SAMPLING as S, default_candidates
from .cipai import CiPu, Form, allowed_marks
from .corpus_stats import CorpusStats
from .judge import Judge, craft, summarise
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
    logits, _ = model(x, y)  # with targets a form model reads the poem's form off its text, as it composed it
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
    rows = [r for r in cp.listing() if r.name not in SKIP and r.count > 0]
    return [r.name for r in rows[:top]]


def turing_test(gen: list[str], real: list[str], seed: int = 0, folds: int = 5, top: int = 12) -> dict:
    """Cross-validated ROC AUC of a classifier telling `gen` (label 1) from `real` (0), and the
    character n-grams with the largest weights each way. The regularisation C is the best of a
    small grid by the same cross-validation: the classifier gets every chance to spot the machine."""
    from .critic import cross_validate

    if min(len(gen), len(real)) < folds:
        return {"auc": math.nan, "n": len(gen) + len(real), "machine": [], "human": []}
    auc, C, p, model = cross_validate(gen, real, (0.3, 1.0, 3.0, 10.0, 30.0, 100.0), seed, folds, what="turing")
    y = [1] * len(gen) + [0] * len(real)
    names = model[0].get_feature_names_out()
    coef = model[1].coef_[0]
    order = coef.argsort()
    return {"auc": auc, "accuracy": float(sum((q > 0.5) == bool(t) for q, t in zip(p, y)) / len(y)),
            "C": C, "n": len(y), "machine": [str(names[i]) for i in order[::-1][:top]],
            "human": [str(names[i]) for i in order[:top]]}


def evaluate(model, tokenizer, cp: CiPu, corpus: CorpusStats, *, k: int = 3, top: int = 30,
             seed: int = 0, temperature: float = S.temperature, top_k: int | None = S.top_k,
             top_p: float | None = S.top_p, min_p: float | None = S.min_p,
             presence_penalty: float = S.presence_penalty, frequency_penalty: float = S.frequency_penalty,
             max_real: int = 10,
             candidates: int | None = None, clause_ends: bool = True, judge: Judge | None = None, themes: bool = False,
             log=None) -> dict:
    """The report of `tianci compose-eval`: k poems for each of the top 词牌 at this sampling setting,
    seeds seed + i (the same poems for the same arguments), next to the same real poems. themes: each
    词牌's poems are asked for 1-3 theme words drawn (tianci.themes) from one of its held-out poems, and
    the report counts how many appear. candidates=None: what compose does (sampling.default_candidates)."""
    from ..themes import ThemeWords
    from .compose import Composer, compose_batch

    train_text = "\n\n".join("\n".join(p.paragraphs) for p in corpus.poems if p.split != "val")
    judge = judge or Judge.from_corpus(corpus)
    candidates = default_candidates(candidates, themes, True, judge.critic is not None)
    composer = Composer(tokenizer, cp.phon, cp, judge=judge, clause_ends=clause_ends)
    train_poems = train_text.split("\n\n")
    # the bar of `prepare --themes` (a word >= 20 train poems share) on the ci corpus (18,985 train
    # poems); a small corpus gets a lower one, so that its measure is not empty
    words = ThemeWords.from_texts(train_poems, min_poems=min(20, max(2, len(train_poems) // 50))) if themes else None
    rows, pairs = [], ([], [])
    for n, name in enumerate(top_cipai(cp, top)):
        t0 = time.perf_counter()
        form = cp.form(name)
        ent = cp.resolve(name)
        held_out = [corpus.poems[i] for t in ent.titles for i in corpus.by_title.get(t, [])
                    if corpus.poems[i].split == "val"]
        theme = _theme_for(words, held_out, max_real, seed + n) if words is not None else ()
        res = compose_batch(model, tokenizer, form, k, seed=seed + n, temperature=temperature, top_k=top_k,
                            top_p=top_p, min_p=min_p, presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty, composer=composer, candidates=candidates,
                            theme=",".join(theme) or None)
        samples = []
        for r, jn in zip(res, judge.lm.nlls([r.text for r in res])):
            c = check_poem(r.text, form, cp.phon)
            nll = nll_per_token(model, tokenizer, f"\n\n{r.title} {r.author}\n", r.text + "\n")
            samples.append({"author": r.author, "text": r.text, "rhyme": r.rhyme, "check": asdict(c),
                            "judge_nll": jn, "self_nll": nll,
                            "craft": asdict(craft(r.text, judge.ends, form.rhyme, form.repeat)),
                            "longest_copy": longest_copy(r.text, train_text),
                            "theme": list(r.theme), "theme_found": r.theme_found,
                            "backoffs": [str(b) for b in r.backoffs]})
        real = held_out[:max_real]
        real_text = ["\n".join(p.paragraphs) for p in real]
        real_rows = []
        for p, t, jn in zip(real, real_text, judge.lm.nlls(real_text) if real_text else []):
            fits = check_poem(t, form, cp.phon).form_ok  # the rhyme positions are known only then
            real_rows.append({"text": t, "judge_nll": jn,
                              "self_nll": nll_per_token(model, tokenizer, f"\n\n{p.title} {p.author}\n", t + "\n"),
                              "craft": asdict(craft(t, judge.ends, form.rhyme if fits else (),
                                                    form.repeat if fits else ()))})
        m = min(len(samples), len(real_rows))  # equal numbers per 词牌 for the classifier
        pairs[0].extend(s["text"] for s in samples[:m])
        pairs[1].extend(r["text"] for r in real_rows[:m])
        row = {"cipai": name, "source": form.source, "variant": form.variant, "corpus_count": form.corpus_count,
               "form_ok": sum(s["check"]["form_ok"] for s in samples) / k,
               "tone": _ratio(samples, "tone"), "rhyme": _ratio(samples, "rhyme"),
               "judge_gen": _mean(s["judge_nll"] for s in samples),
               "judge_real": _mean(r["judge_nll"] for r in real_rows), "n_real": len(real_rows),
               "broken_gen": summarise([_craft(s) for s in samples])["broken_clauses"],
               "longest_copy": max(s["longest_copy"] for s in samples),
               "copies_ge8": sum(s["longest_copy"] >= COPY_FLAG for s in samples),
               "backoffs": sum(len(s["backoffs"]) for s in samples),
               "seconds": time.perf_counter() - t0, "samples": samples, "real": real_rows}
        rows.append(row)
        if log:
            log(format_row(row))
    return {"k": k, "top": top, "seed": seed, "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "min_p": min_p, "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty,
            "candidates": candidates, "clause_ends": clause_ends, "themes": themes,
            "critic": None if judge.critic is None else {**judge.critic.summary(), "weight": judge.critic_weight},
            "judge_order": judge.lm.order,
            "per_cipai": rows, "overall": _overall(rows), "turing": turing_test(*pairs, seed=seed)}


def _theme_for(words, held_out, max_real: int, seed: int) -> tuple[str, ...]:
    """1-3 theme words of one held-out poem of the 词牌, preferring poems that are not on the real side
    of the comparison (the first max_real), so the classifier is not handed the real poems' own words;
    () when none of them holds a theme word."""
    rng = random.Random(seed * 1_000_003 + 7)
    for p in held_out[max_real:] + held_out[:max_real]:
        theme = words.pick("\n".join(p.paragraphs), rng)
        if theme:
            return theme
    return ()


def _craft(d: dict):
    from .judge import Craft

    return Craft(**d["craft"])


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else math.nan


def _ratio(samples, what: str) -> float:
    hits = sum(s["check"][f"{what}_hits"] for s in samples)
    total = sum(s["check"][f"{what}_total"] for s in samples)
    return hits / total if total else 1.0


def _overall(rows) -> dict:
    if not rows:
        return {}
    ss = [s for r in rows for s in r["samples"]]
    rs = [x for r in rows for x in r["real"]]
    n = len(ss)
    gen_craft, real_craft = summarise([_craft(s) for s in ss]), summarise([_craft(x) for x in rs])
    return {"samples": n, "real": len(rs), "form_ok": sum(s["check"]["form_ok"] for s in ss) / n,
            "tone": _ratio(ss, "tone"), "rhyme": _ratio(ss, "rhyme"),
            "judge_gen": _mean(s["judge_nll"] for s in ss), "judge_real": _mean(x["judge_nll"] for x in rs),
            "self_nll_gen": _mean(s["self_nll"] for s in ss), "self_nll_real": _mean(x["self_nll"] for x in rs),
            "craft_gen": gen_craft, "craft_real": real_craft, "broken_gen": gen_craft["broken_clauses"],
            "longest_copy": max(s["longest_copy"] for s in ss),
            "copies_ge8": sum(s["longest_copy"] >= COPY_FLAG for s in ss),
            "theme_asked": sum(len(s.get("theme", ())) for s in ss),
            "theme_found": sum(len(s.get("theme_found", ())) for s in ss),
            "theme_all": sum(bool(s.get("theme")) and len(s["theme_found"]) == len(s["theme"]) for s in ss),
            "theme_poems": sum(bool(s.get("theme")) for s in ss),
            "backoffs": sum(len(s["backoffs"]) for s in ss)}


HEADER = (f"{'词牌':<10}{'form':>6}{'tone':>7}{'rhyme':>7}{'judge gen':>10}{'real':>7}{'broken':>8}"
          f"{'copy':>6}{'≥8':>4}{'backoff':>8}")


def format_row(r: dict, name: str | None = None) -> str:
    name = name or r["cipai"]
    pad = 10 - sum(2 if is_han(c) else 1 for c in name) // 1
    return (f"{name}{' ' * max(pad, 1)}{r['form_ok']:>6.0%}{r['tone']:>7.1%}{r['rhyme']:>7.1%}"
            f"{r['judge_gen']:>10.3f}{r['judge_real']:>7.3f}{r['broken_gen']:>8.2%}"
            f"{r['longest_copy']:>6d}{r['copies_ge8']:>4d}{r['backoffs']:>8d}")


def format_table(report: dict) -> str:
    lines = [HEADER] + [format_row(r) for r in report["per_cipai"]]
    if report.get("overall"):
        lines.append(format_row(report["overall"], "ALL"))
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    """The headline: the Turing test, then each measure composed vs real."""
    o, t = report["overall"], report["turing"]
    g, r = o["craft_gen"], o["craft_real"]
    lines = [f"machine Turing test: ROC AUC {t['auc']:.3f} (0.5 = indistinguishable; {t['n']} poems, "
             f"5-fold CV, C={t.get('C')}); accuracy {t.get('accuracy', math.nan):.3f}",
             f"  gives the machine away: {' '.join(t['machine'])}",
             f"  gives the human away:   {' '.join(t['human'])}",
             f"form {o['form_ok']:.0%}  tone {o['tone']:.1%}  rhyme {o['rhyme']:.1%}  "
             f"({o['samples']} composed, {o['real']} real)",
             f"{'':<22}{'composed':>10}{'real':>10}",
             f"{'judge nats/symbol':<22}{o['judge_gen']:>10.3f}{o['judge_real']:>10.3f}",
             f"{'broken clauses':<22}{g['broken_clauses']:>10.2%}{r['broken_clauses']:>10.2%}",
             f"{'distinct chars/poem':<22}{g['distinct']:>10.3f}{r['distinct']:>10.3f}",
             f"{'reduplication (AA)':<22}{g['redup']:>10.2%}{r['redup']:>10.2%}",
             f"{'repeated rhyme chars':<22}{g['rhyme_repeats']:>10.2%}{r['rhyme_repeats']:>10.2%}",
             f"(self-scored NLL, the generating model on its own poems, no measure of quality: "
             f"{o['self_nll_gen']:.3f} vs real {o['self_nll_real']:.3f})",
             f"longest copy {o['longest_copy']} ({o['copies_ge8']} poems ≥ 8)"]
    if report.get("candidates", 1) > 1:
        c = report.get("critic")
        lines.append(f"each poem the best of {report['candidates']} drafts by the judge" + (
            f" and the run's critic" + (f" at weight {c['weight']:g}" if "weight" in c else "") +
            f" ({c['n_gen']} drafts vs {c['n_real']} "
            f"real train-split poems; its own CV AUC {c['cv_auc']:.3f})" if c else ""))
    if o.get("theme_asked"):
        lines.append(f"theme words found {o['theme_found'] / o['theme_asked']:.1%} ({o['theme_found']} of "
                     f"{o['theme_asked']} asked); every word in {o['theme_all']} of {o['theme_poems']} poems")
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    Path(path).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

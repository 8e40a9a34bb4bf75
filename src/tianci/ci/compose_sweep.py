"""`tianci compose-eval --sweep "temperature=0.7,0.8 top_p=0.9,0.95 min_p=0,0.05"`: the compose-eval report
of every setting of a grid, on the same model, seeds and real poems, one table row per setting.

It is how the composing defaults (tianci.sampling.COMPOSE_SAMPLING) are chosen, and how anyone re-checks
them: each row is `compose_eval.evaluate` itself (the measures are its, nothing is re-measured here), the
judge is built once and shared, and the real poems' columns are the same for every row (shown once, as
the `real` line). A difference smaller than the Turing test's cross-validation noise (about ±0.03 AUC
at 180 poems) is no difference.
"""

from __future__ import annotations

import itertools
import math

from ..errors import ParameterError, TianciError
from ..sampling import check_sampling

KEYS = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,  # what a sweep may vary
        "presence_penalty": float, "frequency_penalty": float}
MAX_SETTINGS = 64  # each setting is a whole compose-eval: a bigger grid is a typo, not a plan
SYNTAX = "NAME=V1,V2,... separated by spaces, NAME one of " + ", ".join(KEYS)


def parse_sweep(text: str, base: dict) -> list[dict]:
    """The settings of a sweep, in grid order (the last name varies fastest): `base` (the command's own
    sampling flags, --temperature ... --frequency-penalty) with the named values put in. A one-line ParameterError for
    a malformed part, an unknown or repeated name, a value out of its range or too big a grid."""
    axes: dict[str, list] = {}
    for part in text.split():
        key, eq, values = part.partition("=")
        key = key.replace("-", "_")
        if not eq or key not in KEYS or not values:
            raise ParameterError("sweep", part, SYNTAX)
        if key in axes:
            raise ParameterError("sweep", part, SYNTAX, f"{key} is named twice")
        try:
            vals = list(dict.fromkeys(KEYS[key](v) for v in values.split(",")))
        except ValueError:
            raise ParameterError("sweep", part, f"{key}=" + ("integers" if KEYS[key] is int else "numbers") +
                                 " separated by commas") from None
        for v in vals:
            try:
                check_sampling(**{key: v})
            except TianciError as e:
                raise TianciError(f"sweep={part!r}: {e.message}", param="sweep", allowed=e.allowed) from None
        axes[key] = vals
    if not axes:
        raise ParameterError("sweep", text, SYNTAX)
    n = math.prod(len(v) for v in axes.values())
    if n > MAX_SETTINGS:
        raise ParameterError("sweep", text, f"at most {MAX_SETTINGS} settings", f"the grid has {n}")
    return [{**base, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]


def sweep(model, tokenizer, cp, corpus, settings: list[dict], *, judge=None, log=None, **kw) -> dict:
    """{"settings", "rows" (one per setting: the setting and its headline measures), "real" (the real
    poems' side, the same for every setting), "reports" (each setting's whole compose-eval report)}.
    kw: the rest of `evaluate`'s arguments (k, top, seed, candidates, clause_ends), shared by every row."""
    from .compose_eval import evaluate
    from .judge import Judge

    judge = judge or Judge.from_corpus(corpus)
    reports = []
    for i, s in enumerate(settings, 1):
        if log:
            log(f"[{i}/{len(settings)}] {describe(s)}")
        reports.append(evaluate(model, tokenizer, cp, corpus, judge=judge, **kw, **s))
    rows = [{**s, **headline(r)} for s, r in zip(settings, reports)]
    return {"settings": settings, "rows": rows, "real": real_side(reports[0]) if reports else {},
            "reports": reports}


def headline(report: dict) -> dict:
    """A compose-eval report's headline measures of the composed poems (its `overall` and `turing`)."""
    o, g = report["overall"], report["overall"]["craft_gen"]
    return {"auc": report["turing"]["auc"], "judge": o["judge_gen"], "broken": g["broken_clauses"],
            "distinct": g["distinct"], "redup": g["redup"], "rhyme_repeats": g["rhyme_repeats"],
            "form_ok": o["form_ok"], "tone": o["tone"], "rhyme": o["rhyme"],
            "longest_copy": o["longest_copy"], "backoffs": o["backoffs"], "samples": o["samples"]}


def real_side(report: dict) -> dict:
    o, r = report["overall"], report["overall"]["craft_real"]
    return {"judge": o["judge_real"], "broken": r["broken_clauses"], "distinct": r["distinct"],
            "redup": r["redup"], "rhyme_repeats": r["rhyme_repeats"], "poems": o["real"]}


def describe(s: dict) -> str:
    return " ".join(f"{k}={'off' if s.get(k) is None else s[k]}" for k in KEYS)


HEADER = (f"{'temp':>5}{'top_k':>6}{'top_p':>6}{'min_p':>6}{'pres':>6}{'freq':>6} |{'AUC':>6}{'judge':>7}{'broken':>8}{'distinct':>9}"
          f"{'AA':>7}{'rhyme rep':>10}{'form':>6}{'tone':>7}{'rhyme':>7}{'copy':>5}")


def _v(x, spec: str, width: int) -> str:
    return f"{'-' if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec):>{width}}"


def format_sweep(result: dict) -> str:
    """One line per setting, then the real poems' line (their measures do not depend on the setting)."""
    lines = [HEADER]
    for r in result["rows"]:
        lines.append(f"{_v(r['temperature'], 'g', 5)}{_v(r['top_k'], 'd', 6)}{_v(r['top_p'], 'g', 6)}"
                     f"{_v(r['min_p'], 'g', 6)}{_v(r['presence_penalty'], 'g', 6)}{_v(r['frequency_penalty'], 'g', 6)}"
                     f" |{_v(r['auc'], '.3f', 6)}{_v(r['judge'], '.3f', 7)}"
                     f"{_v(r['broken'], '.2%', 8)}{_v(r['distinct'], '.3f', 9)}{_v(r['redup'], '.2%', 7)}"
                     f"{_v(r['rhyme_repeats'], '.2%', 10)}{_v(r['form_ok'], '.0%', 6)}{_v(r['tone'], '.1%', 7)}"
                     f"{_v(r['rhyme'], '.1%', 7)}{_v(r['longest_copy'], 'd', 5)}")
    real = result.get("real")
    if real:
        lines.append(f"{'real':>35} |{'':>6}{_v(real['judge'], '.3f', 7)}"
                     f"{_v(real['broken'], '.2%', 8)}{_v(real['distinct'], '.3f', 9)}{_v(real['redup'], '.2%', 7)}"
                     f"{_v(real['rhyme_repeats'], '.2%', 10)}")
    if result["rows"]:
        r = result["rows"][0]
        lines.append(f"({r['samples']} composed poems a row; the same {real.get('poems', 0)} real poems for every "
                     "row; AUC 0.5 = indistinguishable; judge: nats/symbol under the independent 5-gram)")
    return "\n".join(lines)

"""`tianci critic --run DIR`: fit the run's critic (its own drafts vs real train-split ci), which composing
then uses to keep the most human-like of several drafts (tianci.ci.critic)."""

from __future__ import annotations

import sys

from ..ci.critic import K
from ..errors import ParameterError


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory (a GPT trained with the char tokenizer)")
    p.add_argument("--top", type=int, default=60, help="draft for this many of the most common 词牌 (default 60)")
    p.add_argument("--k", type=int, default=K, help="drafts per 词牌, each paired with a real train-split poem "
                   f"of it (default {K})")
    p.add_argument("--data", default=None, help="poems.jsonl or its data directory (default: the run's)")
    p.add_argument("--cipu-source", default=None, help="词谱 directory or URL (default TIANCI_CIPU_SOURCE)")
    p.add_argument("--rhyme-source", default=None, help="rhyme tables (default TIANCI_RHYME_SOURCE)")
    p.add_argument("--which", choices=["best", "latest"], default="best")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from ..checkpoint import load_run
    from ..ci.cipai import open_cipu, poems_for_run
    from ..ci.compose import Composer
    from ..ci.critic import FILE, fit_for_run

    if not 1 <= args.top <= 1000:
        raise ParameterError("top", args.top, "1..1000")
    if not 1 <= args.k <= 256:
        raise ParameterError("k", args.k, "1..256")
    cp = open_cipu(args.cipu_source, poems_for_run(args.run, args.data), args.rhyme_source)
    r = load_run(args.run, device=args.device, which=args.which)
    composer = Composer(r.tokenizer, cp.phon, cp)
    critic = fit_for_run(r.model, r.tokenizer, cp, composer, top=args.top, k=args.k,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
    path = critic.save(args.run)
    print(f"critic: {critic.n_gen} drafts vs {critic.n_real} real train-split poems, {len(critic.grams):,} "
          f"n-grams, C={critic.C}; cross-validated ROC AUC {critic.cv_auc:.3f} (how well it tells them apart)")
    print(f"wrote {path} ({FILE}: compose keeps the most human-like of its drafts from now on)")
    return 0

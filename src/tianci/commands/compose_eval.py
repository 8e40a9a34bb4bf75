"""`tianci compose-eval --run DIR`: form/tone/rhyme compliance, fluency and novelty of composed ci (`--sweep`: one row per sampling setting)."""

from __future__ import annotations

import dataclasses
import json
import sys

from ..errors import ParameterError
from ..sampling import COMPOSE_SAMPLING, CRITIC_CANDIDATES, THEME_CANDIDATES, add_sampling_flags, check_sampling


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory (a GPT trained with the char tokenizer)")
    p.add_argument("--k", type=int, default=3, help="samples per 词牌 (default 3)")
    p.add_argument("--top", type=int, default=30, help="how many of the most common 词牌 (default 30)")
    p.add_argument("--data", default=None, help="poems.jsonl or its data directory (default: the run's)")
    p.add_argument("--out", default=None, help="write the full report (with every poem) as JSON here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the tables")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_flags(p, COMPOSE_SAMPLING)
    p.add_argument("--sweep", default=None, metavar="GRID", help='one report per sampling setting of a grid, e.g. '
                   '"temperature=0.7,0.8,1.0 top_p=0.9,0.95,1.0 min_p=0,0.05" (same model, seeds and real poems; '
                   'a name not given keeps its flag\'s value): one table row per setting')
    p.add_argument("--themes", action="store_true", help="ask each 词牌's poems for 1-3 theme words drawn from one "
                   "of its held-out poems, and count how many appear (what --theme costs, measured)")
    p.add_argument("--candidates", type=int, default=None, help="drafts per poem, the judge keeps the best (default: "
                   f"what compose does: {CRITIC_CANDIDATES} with the run's critic, else 1, or {THEME_CANDIDATES} with --themes)")
    p.add_argument("--critic", choices=["on", "off"], default="on", help="use the run's critic (`tianci critic`) "
                   "when it has one, as compose does (default on; off: the judge alone)")
    p.add_argument("--critic-weight", type=float, default=None, metavar="W",
                   help="the critic's log-odds added per nat of judge fluency when picking a draft (default "
                        "judge.CRITIC_WEIGHT, what compose uses; how it was chosen: docs/compose.md §9)")
    p.add_argument("--clause-ends", choices=["on", "off"], default="on",
                   help="keep clauses from ending on characters real ci almost never ends one with (default on)")
    p.add_argument("--cipu-source", default=None, help="词谱 directory or URL (default TIANCI_CIPU_SOURCE)")
    p.add_argument("--rhyme-source", default=None, help="rhyme tables (default TIANCI_RHYME_SOURCE)")
    p.add_argument("--which", choices=["best", "latest"], default="best")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from ..checkpoint import load_run
    from ..ci.cipai import open_cipu, poems_for_run
    from ..ci.compose_eval import HEADER, evaluate, format_summary, format_table, write_json
    from ..ci.compose_sweep import format_sweep, parse_sweep, sweep
    from ..ci.judge import Judge

    if not 1 <= args.k <= 64:
        raise ParameterError("k", args.k, "1..64")
    if not 1 <= args.top <= 1000:
        raise ParameterError("top", args.top, "1..1000")
    if args.candidates is not None and not 1 <= args.candidates <= 16:
        raise ParameterError("candidates", args.candidates, "1..16")
    if args.critic_weight is not None and not 0 <= args.critic_weight <= 10:
        raise ParameterError("critic_weight", args.critic_weight, "0..10")
    setting = dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p or None,
                   min_p=args.min_p or None, presence_penalty=args.presence_penalty,
                   frequency_penalty=args.frequency_penalty)
    check_sampling(**setting)
    settings = parse_sweep(args.sweep, setting) if args.sweep is not None else None  # refused before loading
    cp = open_cipu(args.cipu_source, poems_for_run(args.run, args.data), args.rhyme_source)
    r = load_run(args.run, device=args.device, which=args.which)
    judge = Judge.for_run(cp.corpus, args.run) if args.critic == "on" else Judge.from_corpus(cp.corpus)
    if args.critic_weight is not None:
        judge = dataclasses.replace(judge, critic_weight=args.critic_weight)
    shared = dict(k=args.k, top=args.top, seed=args.seed, candidates=args.candidates, judge=judge,
                  clause_ends=args.clause_ends == "on", themes=args.themes)
    if settings is not None:
        report = sweep(r.model, r.tokenizer, cp, cp.corpus, settings, log=log, **shared)
    else:
        log(HEADER)
        report = evaluate(r.model, r.tokenizer, cp, cp.corpus, **shared, **setting, log=log)
    report["run"] = str(args.run)
    if args.out:
        write_json(report, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    elif settings is not None:
        print(format_sweep(report))
    else:
        print(format_table(report))
        print(format_summary(report))
    return 0


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

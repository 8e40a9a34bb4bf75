"""`tianci compose --run DIR --cipai 浣溪沙`: a ci with guaranteed form, tone and rhyme, streamed."""

from __future__ import annotations

import sys

from ..errors import ParameterError, TianciError
from ..sampling import COMPOSE_SAMPLING, CRITIC_CANDIDATES, THEME_CANDIDATES, add_sampling_flags, check_sampling, default_candidates


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory (a GPT trained with the char tokenizer)")
    p.add_argument("--cipai", required=True, help="词牌 name, alias or pinyin (see `tianci cipai --list`)")
    p.add_argument("--start", default=None, help="opening characters (checked against the pattern)")
    p.add_argument("--acrostic", default=None, help="藏头: the first character of each line (or clause)")
    p.add_argument("--theme", default=None, help="1-3 words to write about, e.g. 春雨,归舟: in the title line of a "
                   "run prepared with --themes, and favoured in the poem among what the form allows, never past it")
    p.add_argument("--author", default=None, help="author name in the prompt (default: the model writes one)")
    add_sampling_flags(p, COMPOSE_SAMPLING)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--candidates", type=int, default=None, help="drafts per poem, decoded in one batch; an "
                   "independent judge (a Kneser–Ney 5-gram of the training poems plus craft rules, and the run's "
                   "critic if `tianci critic` fitted one) keeps the best (default: "
                   f"{CRITIC_CANDIDATES} when the run has a critic, else 1, or {THEME_CANDIDATES} with --theme when "
                   "the training poems are at hand)")
    p.add_argument("--variant", type=int, default=None, help="词谱 variant index (see `tianci cipai NAME`)")
    p.add_argument("--cipu-source", default=None, help="词谱 directory or URL (default TIANCI_CIPU_SOURCE)")
    p.add_argument("--rhyme-source", default=None, help="rhyme tables (default TIANCI_RHYME_SOURCE)")
    p.add_argument("--data", default=None, help="poems.jsonl / data directory for corpus skeletons "
                   "(default: the run's data directory)")
    p.add_argument("--which", choices=["best", "latest"], default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8 weights for faster decoding (slightly different outputs; see docs/speed.md)")


def run(args) -> int:
    from ..checkpoint import load_run
    from ..runtime import compute_init
    from ..ci.cipai import open_cipu
    from ..ci.compose import Composer, compose

    if not 1 <= args.num_samples <= 64:
        raise ParameterError("num_samples", args.num_samples, "1..64")
    check_sampling(args.temperature, args.top_k, args.top_p, args.min_p, args.presence_penalty,
                   args.frequency_penalty)
    if args.candidates is not None and not 1 <= args.candidates <= 16:
        raise ParameterError("candidates", args.candidates, "1..16")
    cp = open_cipu(args.cipu_source, args.data, args.rhyme_source, run_dir=args.run)
    device = compute_init(args.device, ddp=False).device  # a device this machine lacks: one clear error
    r = load_run(args.run, device=str(device), which=args.which, quantize=args.quantize)
    from ..ci.critic import Critic

    judge = None
    critic = Critic.load(args.run) if cp.corpus is not None else None
    # a judge when drafts are to be chosen: asked for, or the default with a critic or a theme (compose
    # resolves None the same way)
    drafts = default_candidates(args.candidates, args.theme, cp.corpus is not None, critic is not None)
    if drafts > 1:
        from ..ci.judge import Judge

        if cp.corpus is None:
            raise TianciError("choosing among candidates needs the training poems for its judge", param="candidates",
                              allowed="1 without a corpus", hints={"cli": "give the data directory with --data"})
        judge = Judge.from_corpus(cp.corpus, critic=critic)
    composer = Composer(r.tokenizer, cp.phon, cp, judge=judge)
    choice = composer.choose(args.cipai, args.variant, args.start, args.acrostic)  # refuses before any output
    form = choice.form
    if choice.note:
        print(f"[{choice.note}]", file=sys.stderr)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        head = [f"{form.title} " + (f"{args.author}\n" if args.author else "")]

        def emit(piece: str) -> None:
            if head:  # the title goes out with the first piece, so a rejected --start prints nothing
                sys.stdout.write(head.pop())
            sys.stdout.write(piece)
            sys.stdout.flush()

        res = compose(r.model, r.tokenizer, form, start=args.start, acrostic=args.acrostic,
                      temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                      min_p=args.min_p or None, presence_penalty=args.presence_penalty,
                      frequency_penalty=args.frequency_penalty, seed=None if args.seed is None else args.seed + i,
                      author=args.author,
                      on_text=emit, composer=composer, candidates=args.candidates, theme=args.theme)
        which = f"词谱 variant {form.variant}" if form.source == "词谱" else "corpus skeleton"
        note = f"[{form.name}, {which}; rhyme {' → '.join(res.rhyme) or 'none'}; {res.seconds:.2f}s"
        if drafts > 1:
            note += f"; best of {drafts} drafts" + (" (judge + critic)" if critic is not None else " (judge)")
        if res.theme:
            note += f"; theme {len(res.theme_found)}/{len(res.theme)}" + "".join(
                f" ({w} missing)" for w in res.theme if w not in res.theme_found)
        note += f"; {len(res.backoffs)} backoff(s): " + "; ".join(map(str, res.backoffs[:5])) if res.backoffs else ""
        print(note + "]", file=sys.stderr)
    return 0

"""Sampling settings, torch-free (the CLI's flags and the counting model's `sample` read them): the
named defaults, one for composing and one for continuing text, the front ends' one range check and the
CLI's flags. The filters themselves are `tianci.generate.filter_logits`."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ParameterError


@dataclass(frozen=True)
class Sampling:
    """One named sampling setting: the filters of `filter_logits`, and OpenAI's repetition penalties
    (`generate.penalize`), which come first."""

    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


# Composing's defaults, read by every caller (`tianci compose`, compose-eval and its ladder, the server's
# /api/compose and chat, the playground through them): chosen by measurement, `tianci compose-eval --sweep`
# (docs/compose.md §6): 27 settings on the 10-minute ci-cpu model, the rule "fluency first (independent
# judge within 0.1 nats of real ci), then the lowest machine-Turing-test AUC" keeps these (tied, within
# noise, with temperature 1.0 / min-p 0.03). Change them here, and only here.
COMPOSE_SAMPLING = Sampling(temperature=0.8, top_p=0.95)

# drafts per poem when a theme is asked and a judge is at hand, unless the caller says: on the 10-minute
# ci-cpu model (compose-eval --themes, 570 words) 85.1% of the words with one draft, 93.7% with four
# (docs/compose.md §7; tianci.ci.theme); four drafts of a short ci decode in one batch, well under a second
THEME_CANDIDATES = 4

# drafts per poem when the run has a critic (`tianci critic`, tianci.ci.critic), themed or not: the judge
# with the critic keeps the one that reads least like the machine (docs/compose.md §9, measured)
CRITIC_CANDIDATES = 8


def default_candidates(candidates: int | None, theme, has_judge: bool, has_critic: bool = False) -> int:
    """candidates as asked, or when not asked (None): CRITIC_CANDIDATES when the judge has the run's
    critic, THEME_CANDIDATES for a themed poem with a judge to choose among drafts, else 1. The one
    default of compose, compose-eval and the server."""
    if candidates is not None:
        return candidates
    if has_judge and has_critic:
        return max(CRITIC_CANDIDATES, THEME_CANDIDATES if theme else 1)
    return THEME_CANDIDATES if theme and has_judge else 1


# Continuing text (`tianci sample`, SampleOptions, the ladder's samples, an export's model card): another
# use, where the free text is the point and no form catches a wild token.
CONTINUE_SAMPLING = Sampling(temperature=0.8)


PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's range for presence_penalty and frequency_penalty


def check_sampling(temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   min_p: float | None = None, presence_penalty: float | None = None,
                   frequency_penalty: float | None = None) -> None:
    """The front ends' one range check of a sampling setting: a ParameterError naming the first value
    outside its range (None: not given)."""
    lo, hi = PENALTY_RANGE
    for name, value, ok, allowed in (("temperature", temperature, lambda v: 0 <= v <= 10, "0..10"),
                                     ("top_k", top_k, lambda v: v >= 0, ">= 0 (0 = off)"),
                                     ("top_p", top_p, lambda v: 0 < v <= 1, "(0, 1]"),
                                     ("min_p", min_p, lambda v: 0 <= v < 1, "[0, 1) (0 = off)"),
                                     ("presence_penalty", presence_penalty, lambda v: lo <= v <= hi, f"{lo:g}..{hi:g}"),
                                     ("frequency_penalty", frequency_penalty, lambda v: lo <= v <= hi,
                                      f"{lo:g}..{hi:g}")):
        if value is not None and not ok(value):  # NaN fails every range
            raise ParameterError(name, value, allowed)


def add_sampling_flags(p, defaults: Sampling, top_k: bool = True) -> None:
    """--temperature --top-k --top-p --min-p --presence-penalty --frequency-penalty on an argparse parser,
    their defaults from `defaults`."""
    def off(v) -> str:
        return "off" if v is None else str(v)
    p.add_argument("--temperature", type=float, default=defaults.temperature,
                   help=f"0 = greedy (default {defaults.temperature})")
    if top_k:
        p.add_argument("--top-k", type=int, default=defaults.top_k,
                       help=f"keep the k likeliest tokens, 0 = off (default {off(defaults.top_k)})")
    p.add_argument("--top-p", type=float, default=defaults.top_p,
                   help=f"keep the likeliest tokens that cover this much probability (default {off(defaults.top_p)})")
    p.add_argument("--min-p", type=float, default=defaults.min_p, help="keep the tokens at least this fraction as "
                   f"likely as the likeliest, 0 <= min_p < 1, 0 = off (default {off(defaults.min_p)})")
    p.add_argument("--presence-penalty", type=float, default=defaults.presence_penalty,
                   help="subtract this from the logit of every token already drawn, as OpenAI's presence_penalty, "
                   f"-2..2 (default {defaults.presence_penalty:g})")
    p.add_argument("--frequency-penalty", type=float, default=defaults.frequency_penalty,
                   help="subtract this times how often a token was already drawn from its logit, as OpenAI's "
                   f"frequency_penalty, -2..2 (default {defaults.frequency_penalty:g})")

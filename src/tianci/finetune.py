"""`tianci train --init-from RUN --data DIR --out NEW`: a new run that starts from another run's
weights (pretrain on `--corpus classical`, fine-tune on ci). The model is the source run's (its
config; model flags cannot change), the optimizer and schedule start afresh, and the new run's
config.json records where it came from (`init_from`).

Vocabularies are reconciled: the same tokenizer (fingerprint) loads as it is; two character
tokenizers map the embedding (and an untied head) row by row through the characters, so a model
pretrained on the classical vocabulary (a superset of the ci's, built from all corpora) fine-tunes
on a ci data set prepared on its own; anything else is a `VocabMismatch` naming both sizes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import Run
from .errors import RunError

VOCAB_KEYS = ("wte.weight", "lm_head.weight")  # the vocabulary-shaped tensors of every GPT


def _is_vocab(key: str) -> bool:
    """A tensor with one row per token: wte, lm_head, and the value embeddings (value_embeds=True)."""
    return key in VOCAB_KEYS or key.startswith("value_embeds.")


class VocabMismatch(RunError):
    """The source run's tokenizer cannot be mapped onto the data's."""

    status = 400


@dataclass
class InitFrom:
    """What `--init-from` loaded, for the new run's config.json."""

    run: str
    step: int | None  # of the weights loaded (the source's best)
    val_loss: float | None
    vocab_source: int
    vocab_target: int
    carried: int  # target tokens whose rows came from the source (the rest start from the init)
    how: str  # "same tokenizer" | "by character"

    def record(self) -> dict:
        return asdict(self)


def source_preset(run_dir):
    """The source run's preset with the vocabulary left to the new data (resolve_preset sets it)."""
    run = Run(run_dir)
    if run.kind != "gpt":
        raise RunError(f"--init-from {run_dir}: only a GPT run can start another (this one is {run.kind})")
    preset = copy.deepcopy(run.preset())
    preset.model.vocab_size = 0
    return preset


def init_weights(model, run_dir, tokenizer) -> InitFrom:
    """Load the best weights of `run_dir` into `model` (a fresh GPT over `tokenizer`'s vocabulary)."""
    import torch

    src = Run(run_dir).load("cpu", "best")
    src_tok, src_sd, own = src.tokenizer, src.model.state_dict(), model.state_dict()
    same = src_tok.kind == tokenizer.kind and src_tok.fingerprint() == tokenizer.fingerprint()
    if not same and not (src_tok.kind == tokenizer.kind == "char" and model.config.head != "adaptive"):
        raise VocabMismatch(
            f"--init-from {run_dir}: its vocabulary ({src_tok.vocab_size} {src_tok.kind} tokens) is not the data's "
            f"({tokenizer.vocab_size} {tokenizer.kind} tokens) and only character vocabularies map onto each other",
            param="init_from", allowed="a run trained with the same tokenizer, or char tokenizers on both sides",
            hints={"cli": "prepare the fine-tuning data with the char tokenizer"})
    bad = [k for k in own if k not in src_sd or (not _is_vocab(k) and src_sd[k].shape != own[k].shape)]
    if bad:
        raise RunError(f"--init-from {run_dir}: its model does not fit this one ({', '.join(bad[:3])}): the model "
                       "comes from the source run's config and its flags cannot change", param="init_from")
    carried = tokenizer.vocab_size
    with torch.no_grad():
        if same:
            model.load_state_dict(src_sd)
        else:
            stoi = {src_tok.token_text(i): i for i in range(src_tok.vocab_size)}
            rows = [stoi.get(tokenizer.token_text(i), -1) for i in range(tokenizer.vocab_size)]
            keep = torch.tensor([r >= 0 for r in rows])
            carried = int(keep.sum())
            if carried == 0:
                raise VocabMismatch(f"--init-from {run_dir}: none of the data's {tokenizer.vocab_size} characters "
                                    f"is among the run's {src_tok.vocab_size}", param="init_from")
            index = torch.tensor([max(r, 0) for r in rows])
            for k, v in src_sd.items():
                if _is_vocab(k):  # the target's rows by character; a new character keeps its fresh init
                    own[k][keep] = v[index][keep].to(own[k])
                else:
                    own[k].copy_(v)
    best = Run(run_dir).best()
    return InitFrom(str(Path(run_dir).resolve()), best.get("step"), best.get("val_loss"), src_tok.vocab_size,
                    tokenizer.vocab_size, carried, "same tokenizer" if same else "by character")

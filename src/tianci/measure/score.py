"""`tianci eval`: a run's exact loss on a whole split of its data.

The trainer's evaluation is an estimate: the mean over eval_iters random batches, the same batches at
every evaluation so that evaluations compare with each other, but a few hundredths of a nat away from
the split's true mean (docs/speed.md). Here every token of the split after the first is predicted
exactly once: the split is cut into non-overlapping windows of block_size, window i reading tokens
[i*T, i*T + T) and predicting [i*T + 1, i*T + T], so each prediction sees between 0 and T-1 tokens of
context (the trainer's random windows see the same spread). The last, shorter stretch (fewer than T
tokens) is left out, as the count says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import LoadedRun, loss_fields
from ..corpus import DataDir
from ..errors import DataError

SPLITS = ("val", "train")


@dataclass(frozen=True)
class SplitScore:
    """The mean loss over every window of one split, and what it was computed on."""

    split: str
    data_dir: Path
    windows: int  # non-overlapping windows of block_size
    tokens: int  # predictions scored: windows * block_size
    nats_per_token: float
    fields: dict  # checkpoint.loss_fields: {split}_loss (nats/char), {split}_bpc, per token for BPE


def run_data(run: LoadedRun, data: str | Path | None = None) -> tuple[DataDir, dict]:
    """The data the run was trained on (or `data`) and its meta.json, checked to be tokenized by the run's
    own tokenizer: a split of other tokens would be scored without any error, and mean nothing."""
    recorded = run.meta.get("data", {}).get("dir")
    if not (data or recorded):
        raise DataError(f"{run.run_dir}: its config names no data directory; pass --data DIR")
    d = DataDir(data or recorded)
    meta = d.meta()
    fp, want = meta.get("tokenizer_fingerprint"), run.tokenizer.fingerprint()
    if meta["vocab_size"] != run.tokenizer.vocab_size or (fp and fp != want):
        raise DataError(f"{d.path} was tokenized with another tokenizer than the run {run.run_dir} "
                        f"(vocab {meta['vocab_size']} vs {run.tokenizer.vocab_size}, fingerprint {fp} vs {want})")
    return d, meta


@torch.no_grad()
def score_split(run: LoadedRun, split: str = "val", data: str | Path | None = None,
                batch_size: int = 64) -> SplitScore:
    """The run's model on every window of `split` (see the module doc), `batch_size` windows at a time."""
    assert split in SPLITS and batch_size >= 1
    d, meta = run_data(run, data)
    tokens = np.memmap(d.path / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    T = run.model.config.block_size
    n = (len(tokens) - 1) // T
    if n < 1:
        raise DataError(f"{d.path / f'{split}.bin'} holds {len(tokens)} tokens: fewer than one window of "
                        f"block_size {T} + 1")
    device = next(run.model.parameters()).device
    model = run.model.eval()
    total = 0.0
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        # (B, T + 1): window i is tokens[i*T : i*T + T + 1]; consecutive windows share one token
        xy = torch.from_numpy(np.lib.stride_tricks.as_strided(
            tokens[s * T:], shape=(e - s, T + 1), strides=(T * tokens.itemsize, tokens.itemsize)).astype(np.int64))
        xy = xy.to(device)
        _, loss = model(xy[:, :-1], xy[:, 1:], return_logits=False)  # mean over the (B, T) predictions
        total += float(loss) * (e - s)
    nats = total / n
    return SplitScore(split, d.path, n, n * T, nats, loss_fields(split, nats, meta))

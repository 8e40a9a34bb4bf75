"""What the trainer reads: random windows of a memmapped token file (nanoGPT's format), each batch
a pure function of (seed, step, micro-batch index).

Resuming needs no data position beyond the step, and under DDP rank r takes micro-batches r, r+W,
r+2W, ... of the same global sequence a single process would see with W times the accumulation --
so 1 and N processes train on identical data. The trainer, the benchmark and the int8 quality check
read token files through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import TianciError


class Batches:
    """Random windows from a memmapped token file (nanoGPT format), seeded per (step, micro)."""

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, device: torch.device):
        if not Path(path).exists():
            raise TianciError(f"{path}: token file missing; run `tianci prepare`")
        self.data = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        if len(self.data) <= block_size + 1:
            raise TianciError(f"{path}: only {len(self.data)} tokens, fewer than block_size+1="
                              f"{block_size + 1}; use a smaller --block-size or more text")
        self.block, self.batch, self.device = block_size, batch_size, device
        self.gen = torch.Generator()
        self.offsets = torch.arange(block_size + 1)

    def get(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.gen.manual_seed(seed)
        ix = torch.randint(len(self.data) - self.block - 1, (self.batch,), generator=self.gen)
        rows = torch.from_numpy(self.data[(ix[:, None] + self.offsets).numpy()].astype(np.int64))
        x, y = rows[:, :-1], rows[:, 1:]  # (B, T): y is x shifted by one
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)


def token_counts(path: Path, dtype: str, vocab_size: int) -> torch.Tensor:
    """Occurrences of each token id in a token file: (V,) int64."""
    data = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    return torch.from_numpy(np.bincount(data, minlength=vocab_size)[:vocab_size].astype(np.int64))


def batch_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 4099 + micro) % (2**62)

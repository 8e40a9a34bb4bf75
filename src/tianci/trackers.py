"""Mirror metrics.jsonl into the experiment trackers people already use (optional extras).

`--log tensorboard` writes event files under RUN/tb (pip install tianci[track]);
`--log wandb` logs to Weights & Biases, offline unless WANDB_MODE says otherwise, so it works
without an account (sync later with `wandb sync RUN/wandb/...`)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TianciError


class Tracker:
    def log(self, rec: dict) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TianciError("--log tensorboard needs the tensorboard package: pip install 'tianci[track]'") from None
        self.w = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self.w.add_text("config", "```\n" + str(config) + "\n```")

    def log(self, rec: dict) -> None:
        step = rec.get("step", 0)
        prefix = "eval/" if rec.get("eval") else "train/"
        for k, v in rec.items():
            if k not in ("step", "eval") and isinstance(v, (int, float)):
                self.w.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        self.w.close()


class WandbTracker(Tracker):
    def __init__(self, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise TianciError("--log wandb needs the wandb package: pip install wandb") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project="tianci", dir=str(run_dir), config=config, name=Path(run_dir).name)

    def log(self, rec: dict) -> None:
        prefix = "eval/" if rec.get("eval") else "train/"
        self.run.log({prefix + k: v for k, v in rec.items() if k not in ("step", "eval")}, step=rec.get("step"))

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str, run_dir: Path, config: dict) -> Tracker | None:
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, config)
    if kind == "wandb":
        return WandbTracker(run_dir, config)
    return None

"""Run directories and checkpoints: `Run` is the one reader and writer of a run directory, for the
GPT and for the counting model.

A run directory holds everything needed to sample, resume or serve:

    manifest.json      which files here tianci wrote (`--force` removes those and nothing else)
    config.json        the resolved config (preset + overrides), the data's meta, and the
                       tokenizer's kind, vocab_size and fingerprint (checked at every load)
    tokenizer.json     the tokenizer (a model is useless without it)
    metrics.jsonl      one JSON line per log/eval step; losses in nats per character for every model
                       kind (`val_loss`), with nats per token beside them where tokens are not chars
    ckpt/model-<step>.safetensors + ckpt/state-<step>.pt   weights / optimizer, RNG, step (GPT)
    latest.json        points at the newest complete checkpoint pair
    best.safetensors   the weights with the best validation loss (+ best.json)
    ngram.json         the counting model's counts (instead of ckpt/ and best.*)

Every file goes through `files.atomic_write`, and latest.json is replaced only after both files of
its checkpoint are complete: a process killed at any moment leaves the previous checkpoint loadable.
Importing this module costs no torch: the weight functions import it when called.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, RunError
from .files import Manifest, atomic_write, atomic_write_json, clean_temp, read_json

# What a run writes at the top level; recorded in the manifest when the run is created (the
# directory is empty then, so these names can only be tianci's). Checkpoint pairs are recorded
# one by one as they are written.
RUN_NAMES = ("config.json", "tokenizer.json", "metrics.jsonl", "latest.json", "best.safetensors",
             "best.json", "ngram.json", "tb/", "wandb/")
KINDS = ("gpt", "ngram")


class CheckpointError(RunError):
    """A checkpoint file is missing, truncated, foreign or does not fit the run."""


# ----------------------------------------------------------------------------- weights (torch)

def _weights(model) -> dict:
    """State dict of the raw model (never a compiled/DDP wrapper), tied tensors stored once."""
    sd, seen, out = model.state_dict(), {}, {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            continue  # tied weight (lm_head = wte): load_weights re-ties it
        if key is not None:
            seen[key] = k
        out[k] = v.detach().to("cpu").contiguous()
    return out


def _non_finite(sd: dict) -> list[str]:
    import torch
    return [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_weights(model, path, metadata: dict | None = None) -> None:
    """Weights as safetensors, atomically. Non-finite weights are never written (RunError)."""
    from safetensors.torch import save

    sd = _weights(model)
    bad = _non_finite(sd)
    if bad:
        raise RunError(f"refusing to write {path}: the weights are not finite ({', '.join(bad[:3])}); "
                       "the training diverged (lower --learning-rate)")
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, save(sd, metadata=meta))


def load_weights(model, path) -> None:
    from safetensors.torch import load_file
    try:
        from safetensors import SafetensorError
    except ImportError:  # older safetensors
        SafetensorError = Exception

    path = Path(path)
    try:
        sd = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or foreign?): {e}") from None
    own = model.state_dict()
    tied = getattr(model.config, "tie_embeddings", False)  # lm_head.weight is stored once, as wte's
    missing = [k for k in own if k not in sd and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{path}: weights do not match the config.json beside them (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {bad[:3]}); was it written by another run?")
    nan = _non_finite(sd)
    if nan:
        raise CheckpointError(f"{path}: the weights are not finite ({', '.join(nan[:3])}): the run that "
                              "wrote them diverged; retrain with a lower --learning-rate")
    model.load_state_dict(sd, strict=False)


def load_state(path) -> dict:
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: training state file not found") from None
    except Exception as e:  # torch raises several types for truncated/foreign pickles
        raise CheckpointError(f"{path}: not a readable training state (truncated or foreign?): {e}") from None


# ----------------------------------------------------------------------------- the run directory

class Run:
    """A run directory on disk. `Run.create` makes a new one (refusing anyone else's folder),
    `Run(path)` opens an existing one for reading, `Run.resume` for writing on."""

    def __init__(self, path):
        self.path = Path(path)

    # -- creating, opening
    @classmethod
    def create(cls, path, *, force: bool = False) -> "Run":
        """A fresh run directory. An existing tianci run is replaced only with force (removing only
        the files tianci wrote); any other non-empty folder is refused, force or not."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise RunError(f"--out {p} is a file, not a directory; choose another --out")
        if p.is_dir() and any(p.iterdir()):
            man = Manifest.read(p) or _adopt_legacy_run(p)
            if man is None or man.kind != "run":
                what = "a tianci data directory" if man is not None else "not a tianci run directory"
                raise RunError(f"--out {p} is not empty and is {what}; tianci never deletes or writes among "
                               "files it did not write, with or without --force: choose another --out")
            if not force:
                hint = (f"resume it with `tianci train --resume {p}`, or pass --force" if (p / "latest.json").exists()
                        else "pass --force")
                raise RunError(f"--out {p} already holds a tianci run; {hint} to delete the files tianci "
                               "wrote there and start over")
            man.remove_owned()
        p.mkdir(parents=True, exist_ok=True)
        Manifest(p, "run", list(RUN_NAMES)).save()
        return cls(p)

    @classmethod
    def resume(cls, path) -> "Run":
        """An existing run to write on: temp files of a killed writer are cleaned, and a run from a
        tianci without manifests gets one (listing the run files it has)."""
        run = cls(path)
        run.config()  # a clear error if it is not a run
        if Manifest.read(run.path) is None:
            man = _adopt_legacy_run(run.path)
            if man is None:
                raise RunError(f"{run.path} holds files tianci did not write; copy the run files to a new folder "
                               "to resume it")
            man.save()
        clean_temp(run.path)
        return run

    # -- config and tokenizer
    def config(self) -> dict:
        """config.json, checked: a dict with kind and preset."""
        p = self.path / "config.json"
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such run directory (no config.json)")
        if not p.is_file():
            raise CheckpointError(f"{self.path}: not a tianci run directory (no config.json)")
        cfg = read_json(p, "run config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("preset"), dict):
            raise RunError(f"{p} has no 'preset' section: it was not written by `tianci train`")
        if cfg.get("kind", "gpt") not in KINDS:
            raise RunError(f"{p}: kind {cfg.get('kind')!r} is not one of {'|'.join(KINDS)}")
        return cfg

    @property
    def kind(self) -> str:
        return self.config().get("kind", "gpt")

    def preset(self, cfg: dict | None = None):
        from .config import from_dict
        from .errors import TianciError

        cfg = cfg or self.config()
        try:
            return from_dict(cfg["preset"])
        except TianciError as e:
            raise RunError(f"{self.path / 'config.json'}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{self.path / 'config.json'}: the preset section is malformed ({e!r})") from None

    def begin(self, kind: str, preset: dict, data_dir, **extra) -> None:
        """Write config.json (plus `extra` sections: init_from) and tokenizer.json of a new run."""
        from .corpus import DataDir

        data = DataDir(data_dir)
        meta, tok = data.meta(), data.tokenizer()
        atomic_write_json(self.path / "config.json", {
            "kind": kind, "preset": preset, "data": {**meta, "dir": str(data.path)},
            "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()}, **extra})
        atomic_write(self.path / "tokenizer.json", (data.path / "tokenizer.json").read_bytes())

    def tokenizer(self, cfg: dict | None = None):
        """tokenizer.json, checked against config.json (vocab size, and the fingerprint of the
        vocabulary when the config has one): a foreign or reshuffled tokenizer is a RunError."""
        from .tokenizer import load_tokenizer

        cfg = cfg or self.config()
        tp = self.path / "tokenizer.json"
        if not tp.exists():
            raise CheckpointError(f"{tp}: tokenizer missing from the run directory")
        tok = load_tokenizer(tp)
        saved = cfg.get("tokenizer") or {}
        want_v = saved.get("vocab_size", cfg.get("data", {}).get("vocab_size"))
        if want_v is not None and int(want_v) != tok.vocab_size:
            raise RunError(f"{tp} has {tok.vocab_size} tokens but {self.path / 'config.json'} says {want_v}: "
                           "the tokenizer is not the one this run was trained with")
        if saved.get("fingerprint") and saved["fingerprint"] != tok.fingerprint():
            raise RunError(f"{tp} does not match {self.path / 'config.json'} (vocabulary fingerprint differs): "
                           "the tokenizer is not the one this run was trained with")
        return tok

    # -- metrics
    def append_metrics(self, rec: dict) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def write_metrics(self, recs: list[dict]) -> None:
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in recs))

    def metrics(self) -> tuple[list[dict], list[dict]]:
        """(train records, eval records) of metrics.jsonl; a half-written last line is skipped."""
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            raise RunError(f"{self.path}: no metrics.jsonl (is it a tianci run directory?)")
        train, evals = [], []
        lines = p.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    continue  # a kill mid-append
                raise RunError(f"{p}:{n}: not a JSON line") from None
            if not isinstance(rec, dict):
                raise RunError(f"{p}:{n}: not a metrics record")
            if rec.get("eval"):
                evals.append(rec)
            elif "train_loss" in rec and "step" in rec:
                train.append(rec)
        return train, evals

    def best(self) -> dict:
        p = self.path / "best.json"
        return read_json(p, "best-checkpoint record") if p.is_file() else {}

    # -- checkpoints
    def _own(self, *rels: str) -> None:
        man = Manifest.read(self.path) or _adopt_legacy_run(self.path) or Manifest(self.path, "run")
        man.add(*rels)

    def save_checkpoint(self, model, state: dict, step: int, keep: int = 1) -> None:
        """Weights + training state at `step`, then latest.json; older pairs beyond `keep` go.
        A failed write (a full disk) is a RunError, and latest.json still names the last good pair."""
        import torch

        w, s = f"ckpt/model-{step:07d}.safetensors", f"ckpt/state-{step:07d}.pt"
        (self.path / "ckpt").mkdir(exist_ok=True)
        self._own(w, s)
        try:
            save_weights(model, self.path / w, {"step": step})
            atomic_write(self.path / s, writer=lambda f: torch.save(state, f))
        except (RunError, RuntimeError) as e:  # torch's own writer reports a failed write as RuntimeError
            for rel in (w, s):
                (self.path / rel).unlink(missing_ok=True)
            Manifest.read(self.path).discard(w, s)
            raise e if isinstance(e, RunError) else RunError(
                f"could not write {self.path / s}: {e}; the last checkpoint is unchanged") from None
        atomic_write_json(self.path / "latest.json", {"step": step, "weights": w, "state": s})
        pairs = sorted((self.path / "ckpt").glob("model-*.safetensors"))
        gone = []
        for old in pairs[:-keep] if keep > 0 else []:
            st = old.with_name(old.name.replace("model-", "state-").replace(".safetensors", ".pt"))
            old.unlink(missing_ok=True)
            st.unlink(missing_ok=True)
            gone += [f"ckpt/{old.name}", f"ckpt/{st.name}"]
        Manifest.read(self.path).discard(*gone)

    def save_best(self, model, step: int, ev: dict) -> None:
        save_weights(model, self.path / "best.safetensors", {"step": step})
        atomic_write_json(self.path / "best.json", {"step": step, **ev})

    def latest(self) -> tuple[Path, Path, int]:
        p = self.path / "latest.json"
        if not p.exists():
            raise CheckpointError(f"{self.path}: no checkpoint yet (latest.json missing)")
        try:
            meta = read_json(p, "checkpoint pointer")
            return self.path / meta["weights"], self.path / meta["state"], int(meta["step"])
        except (DataError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{p}: unreadable checkpoint pointer: {e}") from None

    # -- loading a GPT
    def load(self, device: str = "cpu", which: str = "best", quantize: str = "none") -> "LoadedRun":
        """The GPT of this run in eval mode, with its tokenizer and config, all three checked
        against each other: any mismatch or non-finite weight is a RunError naming the files.
        quantize="int8" stores the Linear weights as int8 (tianci.quant): inference only."""
        from . import formpos
        from .model import GPT

        cfg = self.config()
        if cfg.get("kind", "gpt") == "ngram":
            raise RunError(f"{self.path} holds the counting model; this command needs a GPT run")
        preset = self.preset(cfg)
        tokenizer = self.tokenizer(cfg)
        if preset.model.vocab_size != tokenizer.vocab_size:
            raise RunError(f"{self.path / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but the model in "
                           f"{self.path / 'config.json'} has vocab_size {preset.model.vocab_size}")
        model = GPT(preset.model)
        best = self.path / "best.safetensors"
        load_weights(model, best if which == "best" and best.exists() else self.latest()[0])
        formpos.attach(model, tokenizer)  # a form model's token classes: not stored with the weights
        model.to(device).eval()
        if quantize != "none":
            from .quant import apply_quantization
            apply_quantization(model, quantize)
        return LoadedRun(model, tokenizer, preset, self.path, cfg)


def _adopt_legacy_run(p: Path) -> Manifest | None:
    """A run written before manifests existed: its config.json is a tianci run config, every top-level
    entry is a run file, ckpt/ holds only checkpoint pairs. Then those files are tianci's; else None."""
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(cfg, dict) and cfg.get("kind") in KINDS and isinstance(cfg.get("preset"), dict)):
        return None
    names = {n.rstrip("/") for n in RUN_NAMES} | {"ckpt"}
    owned = []
    for e in p.iterdir():
        if e.name.startswith(".") and e.name.endswith(".tmp"):
            continue
        if e.name not in names:
            return None
        if e.name == "ckpt":
            for c in e.iterdir():
                if not (c.name.startswith(("model-", "state-")) or c.name.endswith(".tmp")):
                    return None
                owned.append(f"ckpt/{c.name}")
        else:
            owned.append(e.name + ("/" if e.is_dir() else ""))
    return Manifest(p, "run", owned + list(RUN_NAMES))


@dataclass
class LoadedRun:
    model: object  # tianci.model.GPT, in eval mode
    tokenizer: object
    preset: object  # tianci.config.Preset
    run_dir: Path
    meta: dict  # config.json


def load_run(run_dir, device: str = "cpu", which: str = "best", quantize: str = "none") -> LoadedRun:
    """Load a trained GPT run for sampling/serving (see Run.load). A LoadedRun is passed through,
    so callers that take "a run directory or a loaded run" need one line."""
    if isinstance(run_dir, LoadedRun):
        return run_dir
    return Run(run_dir).load(device, which, quantize)


def read_config(run_dir) -> dict:
    return Run(run_dir).config()


def latest_paths(run_dir) -> tuple[Path, Path, int]:
    return Run(run_dir).latest()


LN2 = math.log(2)


def loss_fields(split: str, nats_per_token: float, meta: dict) -> dict:
    """A split's loss as every run records it: `{split}_loss` in nats per character (a BPE token
    covers several characters, a char token one), `{split}_bpc` in bits per character, and, where
    tokens are not characters, `{split}_loss_per_token` beside them."""
    tokens = meta.get(f"{split}_tokens")
    chars = meta.get(f"{split}_chars") or tokens or 1
    nats = nats_per_token * (tokens or chars) / chars
    out = {f"{split}_loss": nats, f"{split}_bpc": nats / LN2}
    if tokens and chars != tokens:
        out[f"{split}_loss_per_token"] = nats_per_token
    return out

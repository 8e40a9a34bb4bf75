"""Run directories and checkpoints.

A run directory holds everything needed to sample, resume or serve:

    config.json        the resolved config (preset + overrides) and the data's meta
    tokenizer.json     the tokenizer (a model is useless without it)
    metrics.jsonl      one JSON line per log/eval step
    ckpt/model-<step>.safetensors + ckpt/state-<step>.pt   weights / optimizer, RNG, step
    latest.json        points at the newest complete checkpoint pair
    best.safetensors   the weights with the best validation loss (+ best.json)

Every file is written to a temporary name and moved into place with os.replace, and latest.json
is replaced only after both files of its checkpoint are complete: a process killed at any moment
leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
try:
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # older safetensors
    SafetensorsError = Exception
from safetensors.torch import load_file, save_file

from .config import Preset, from_dict
from .errors import TianciError

RUN_FILES = ("config.json", "tokenizer.json", "metrics.jsonl", "latest.json", "best.safetensors",
             "best.json", "ckpt", "tb", "wandb", "ngram.json", "samples.txt")


class CheckpointError(TianciError):
    pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8"))


def _atomic(path: Path, writer) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
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


def save_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    _atomic(Path(path), lambda tmp: save_file(_weights(model), tmp, metadata=meta))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    path = Path(path)
    try:
        sd = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except (SafetensorsError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or foreign?): {e}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not _is_tied(model, k)]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{path}: weights do not match this model's config (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {bad[:3]}); was it written by another run?")
    model.load_state_dict(sd, strict=False)


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_embeddings", False)


# ----------------------------------------------------------------------------- run dirs

def prepare_run_dir(out: Path, force: bool) -> Path:
    """Create a fresh run dir; refuse to clobber an existing run unless force."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        is_run = (out / "config.json").exists()
        if not force:
            hint = f"resume it with `tianci train --resume {out}`, or pass --force to start over" if is_run \
                else "choose another --out"
            raise TianciError(f"--out {out} already exists and is not empty; {hint}")
        if not is_run:
            raise TianciError(f"--out {out} is not empty and is not a tianci run; refusing to delete it")
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ckpt").mkdir(exist_ok=True)
    return out


def read_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.json"
    if not p.exists():
        raise CheckpointError(f"{run_dir}: not a tianci run directory (no config.json)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: invalid JSON: {e}") from None


def save_checkpoint(run_dir: Path, model, state: dict, step: int, keep: int = 1) -> None:
    run_dir = Path(run_dir)
    wpath = run_dir / "ckpt" / f"model-{step:07d}.safetensors"
    spath = run_dir / "ckpt" / f"state-{step:07d}.pt"
    save_weights(model, wpath, {"step": step})
    _atomic(spath, lambda tmp: torch.save(state, tmp))
    atomic_write_json(run_dir / "latest.json", {"step": step, "weights": f"ckpt/{wpath.name}",
                                                "state": f"ckpt/{spath.name}"})
    # keep the newest `keep` pairs; older ones are no longer pointed at
    pairs = sorted((run_dir / "ckpt").glob("model-*.safetensors"))
    for old in pairs[:-keep]:
        old.unlink(missing_ok=True)
        (old.parent / old.name.replace("model-", "state-").replace(".safetensors", ".pt")).unlink(missing_ok=True)


def latest_paths(run_dir: Path) -> tuple[Path, Path, int]:
    run_dir = Path(run_dir)
    p = run_dir / "latest.json"
    if not p.exists():
        raise CheckpointError(f"{run_dir}: no checkpoint yet (latest.json missing)")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
        return run_dir / meta["weights"], run_dir / meta["state"], int(meta["step"])
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{p}: unreadable checkpoint pointer: {e}") from None


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: training state file not found") from None
    except Exception as e:  # torch raises several types for truncated/foreign pickles
        raise CheckpointError(f"{path}: not a readable training state (truncated or foreign?): {e}") from None


@dataclass
class Run:
    model: torch.nn.Module
    tokenizer: object
    preset: Preset
    run_dir: Path
    meta: dict


def load_run(run_dir, device: str = "cpu", which: str = "best", quantize: str = "none") -> Run:
    """Load a trained GPT run for sampling/serving: model (eval mode), tokenizer, config.
    quantize="int8" stores the Linear weights as int8 (tianci.quant): faster decoding, inference only."""
    from .model import GPT
    from .tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if cfg.get("kind") == "ngram":
        raise CheckpointError(f"{run_dir} holds the counting model; this command needs a GPT run")
    preset = from_dict(cfg["preset"])
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.exists():
        raise CheckpointError(f"{tok_path}: tokenizer missing from the run directory")
    tokenizer = load_tokenizer(tok_path)
    model = GPT(preset.model)
    best = run_dir / "best.safetensors"
    path = best if which == "best" and best.exists() else latest_paths(run_dir)[0]
    load_weights(model, path)
    model.to(device).eval()
    if quantize != "none":
        from .quant import apply_quantization
        apply_quantization(model, quantize)
    return Run(model, tokenizer, preset, run_dir, cfg)

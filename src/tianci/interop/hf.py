"""A run as a Hugging Face transformers folder, and such a folder back as a run.

    export_hf(run_dir, out)   config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                              generation_config.json, README.md (the model card)
    import_hf(folder, out)    config.json, tokenizer.json, best.safetensors (+ best.json): a run
                              that `tianci sample`, `compose` and `serve` read

Stock `AutoModelForCausalLM.from_pretrained(out)` / `AutoTokenizer.from_pretrained(out)` load the
export, without trust_remote_code. config.json also carries the run's own resolved config under
"tianci", so importing our own export restores every switch (attn_impl, init, the train section);
a foreign folder is read from the transformers fields alone (arch.config_from_hf).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import checkpoint as ck
from ..config import Preset, from_dict, to_dict
from ..errors import TianciError
from ..sampling import CONTINUE_SAMPLING
from ..model import GPT
from .arch import convert_attention_state
from . import arch
from .tokens import TOKENIZER_CONFIG, from_hf_tokenizer_json, hf_tokenizer_json

MODEL_FILE = "model.safetensors"


def fused_state(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights in the fused-attention layout, tied lm_head left out when tied."""
    cfg = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return convert_attention_state(sd, cfg, "sdpa") if cfg.attn_impl == "loop" else sd


def prepare_out(out: Path, force: bool, marker: str) -> Path:
    """An empty folder to write into; an existing one only with force, and only if it holds `marker`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise TianciError(f"--out {out} already exists and is not empty; choose another or pass --force",
                              param="out")
        if not (out / marker).exists():
            raise TianciError(f"--out {out} is not empty and holds no {marker}; refusing to overwrite it",
                              param="out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_hf(run_dir, out, *, which: str = "best", force: bool = False, sample: bool = True) -> dict:
    """Write the run as a transformers folder; returns {"model_type", "files"}."""
    from safetensors.torch import save_file

    run = ck.load_run(run_dir, which=which)
    cfg = run.preset.model
    model_type = arch.choose(cfg)  # refuses before anything is written
    out = prepare_out(out, force, "config.json")
    tensors = arch.to_hf(fused_state(run.model), cfg, model_type)
    save_file(tensors, str(out / MODEL_FILE), metadata={"format": "pt"})
    hf_cfg = arch.hf_config(cfg, model_type)
    hf_cfg["tianci"] = to_dict(run.preset)
    _write_json(out / "config.json", hf_cfg)
    (out / "tokenizer.json").write_text(hf_tokenizer_json(run.tokenizer), encoding="utf-8")
    _write_json(out / "tokenizer_config.json", dict(TOKENIZER_CONFIG, model_max_length=cfg.block_size))
    # No end-of-text token: a poem ends with a blank line, so stop on the string (stop_strings).
    _write_json(out / "generation_config.json", {"do_sample": True, "temperature": CONTINUE_SAMPLING.temperature,
                                                 "bos_token_id": None,
                                                 "eos_token_id": None, "pad_token_id": None})
    (out / "README.md").write_text(model_card(run, model_type, sample), encoding="utf-8")
    return {"model_type": model_type, "files": sorted(p.name for p in out.iterdir())}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def import_hf(folder, out, *, force: bool = False) -> dict:
    """Turn a supported transformers folder into a tianci run directory; returns {"model_type", "config"}."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        hf_cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TianciError(f"{folder}: not a transformers folder (no config.json)", param="from") from None
    except json.JSONDecodeError as e:
        raise TianciError(f"{folder / 'config.json'}: invalid JSON: {e}", param="from") from None
    cfg = arch.config_from_hf(hf_cfg)
    preset = Preset(name=f"import:{folder.name}", description=f"imported from a {hf_cfg['model_type']} folder")
    if isinstance(hf_cfg.get("tianci"), dict):  # our own export: every switch, as it was trained
        preset = from_dict(hf_cfg["tianci"])
        own = preset.model
        same = {f.name for f in dataclasses.fields(cfg)} - {"attn_impl", "dropout", "zero_init_proj", "init_std"}
        diff = [n for n in sorted(same) if getattr(own, n) != getattr(cfg, n)
                and not (n == "n_head" and own.attn == "single")]
        if diff:
            raise TianciError(f"{folder}: config.json's 'tianci' section disagrees with its transformers "
                              f"fields on {diff}", param=diff[0])
        cfg = own
    preset.model = cfg
    tok_path = folder / "tokenizer.json"
    if not tok_path.exists():
        raise TianciError(f"{folder}: no tokenizer.json (tianci needs the fast-tokenizer file)", param="from")
    tok = from_hf_tokenizer_json(tok_path.read_text(encoding="utf-8"))
    if tok.vocab_size != cfg.vocab_size:
        raise TianciError(f"{folder}: tokenizer has {tok.vocab_size} tokens, the model {cfg.vocab_size}",
                          param="vocab_size")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TianciError(f"{folder}: no *.safetensors weights (convert .bin weights with transformers first)",
                          param="from")
    hf_sd: dict[str, torch.Tensor] = {}
    for f in files:
        hf_sd.update(load_file(str(f)))
    sd = arch.from_hf({k: v.to(torch.float32) for k, v in hf_sd.items()}, cfg, hf_cfg["model_type"])
    if cfg.attn_impl == "loop":
        sd = convert_attention_state(sd, cfg, "loop")
    model = GPT(cfg)
    model.load_state_dict(sd, strict=not cfg.tie_embeddings)
    run = ck.Run.create(out, force=force)
    ck.atomic_write_json(run.path / "config.json", {
        "kind": "gpt", "preset": to_dict(preset),
        "data": {"vocab_size": cfg.vocab_size, "tokenizer": tok.kind, "imported_from": str(folder)},
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()}})
    tok.save(run.path / "tokenizer.json")
    ck.save_weights(model, run.path / "best.safetensors", {"imported_from": folder.name})
    ck.atomic_write_json(run.path / "best.json", {"step": 0, "imported_from": str(folder)})
    return {"model_type": hf_cfg["model_type"], "config": to_dict(preset)["model"]}


# ----------------------------------------------------------------------------- model card

def _best(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _sample_text(run) -> str:
    from ..generate import SampleOptions, complete

    opts = SampleOptions(max_new_tokens=min(120, run.preset.model.block_size * 2), seed=0, stop_at_end=True)
    return complete(run.model, run.tokenizer, "", 1, opts)[0].text.strip("\n")


def model_card(run, model_type: str, sample: bool = True) -> str:
    data, best, cfg = run.meta.get("data", {}), _best(run.run_dir), run.preset.model
    poetry = data.get("input", "poetry") == "poetry"
    licence = ("the poems are from [chinese-poetry](https://github.com/chinese-poetry/chinese-poetry) "
               "(全宋词, 南唐二主词), MIT licence" if poetry else
               "the training text was the user's own (`tianci prepare --text`); its licence is its owner's")
    val = f"{best['val_loss']:.4f} nats/character (step {best.get('step')})" if "val_loss" in best else "not recorded"
    loss_line = f"- validation loss: {val}"
    text = _sample_text(run) if sample else "(sample left out)"
    tag = "char" if run.tokenizer.kind == "char" else "bpe"
    return f"""---
license: mit
library_name: transformers
pipeline_tag: text-generation
language: [zh]
tags: [tianci, song-ci, poetry, {model_type}]
---

# {run.preset.name}: a tianci (填词) model of Song ci

A small GPT trained with tianci on classical Chinese ci, exported to the stock
`{arch.CAUSAL_LM[model_type]}` architecture (no `trust_remote_code`). Its logits match tianci's to
1e-4 in float32.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("THIS_FOLDER")
model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")
ids = tok("春", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=60, do_sample=True, temperature={CONTINUE_SAMPLING.temperature},
                     stop_strings=["\\n\\n"], tokenizer=tok)
print(tok.decode(out[0]))
```

A poem ends with a blank line (there is no end-of-text token): pass `stop_strings=["\\n\\n"]`.
The context is {cfg.block_size} tokens.

## Model

- architecture: {model_type} ({cfg.n_layer} layers, {cfg.n_head if cfg.attn == "multi" else 1} heads,
  width {cfg.n_embd}, {run.model.num_params():,} parameters)
- tianci switches: pos={cfg.pos}, norm={cfg.norm}, mlp_act={cfg.mlp_act}, qk_norm={cfg.qk_norm},
  tie_embeddings={cfg.tie_embeddings}, bias={cfg.bias}; the full resolved config is under `tianci`
  in config.json
- tokenizer: {tag}, {run.tokenizer.vocab_size} tokens

## Training

- preset: `{run.preset.name}`; {run.preset.description}
- data: {data.get("n_poems", "?")} poems, {data.get("train_tokens", "?")} training tokens
  ({data.get("tokenizer", tag)} tokenizer, split by {data.get("split", "?")})
{loss_line}

## A sample

(tianci sample, temperature {CONTINUE_SAMPLING.temperature}, seed 0)

```
{text}
```

## Licences

The weights: MIT, as tianci. Data: {licence}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import from_dict, load_preset
from ..errors import TianciError
from ..flags import add_config_flags, apply_overrides


def add_arguments(p) -> None:
    p.add_argument("--preset", default="ci-cpu", help="preset name or path to a .toml (see `tianci presets`)")
    p.add_argument("--data", default=None,
                   help="prepared data directory (from `tianci prepare`; default $TIANCI_DATA or data/ci; "
                        "with --resume, the run's own)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    p.add_argument("--init-from", metavar="RUN_DIR", default=None,
                   help="with --out: start from this run's best weights and its config (e.g. pretrained on "
                        "`prepare --corpus classical`), on --data; a char vocabulary is mapped by character")
    p.add_argument("--force", action="store_true", help="with --out: delete an existing run there and start over")
    add_config_flags(p)


def _model_flags(args) -> list[str]:
    return ["--" + k.split("__", 1)[1].replace("_", "-") for k, v in vars(args).items()
            if k.startswith("cfg_model__") and v is not None]


def _default_data() -> str:
    return os.environ.get("TIANCI_DATA", "data/ci")


def run(args) -> int:
    from ..checkpoint import read_config
    from ..train import train

    if args.resume:
        if args.init_from:
            raise TianciError("--init-from starts a new run (--out); --resume continues one: give one of them")
        if args.out and Path(args.out) != Path(args.resume):
            raise TianciError("give either --out (new run) or --resume RUN_DIR, not both")
        saved = read_config(args.resume)
        if saved.get("kind") != "gpt":
            raise TianciError(f"--resume {args.resume}: only GPT runs resume (the counting model trains in seconds)")
        preset = from_dict(saved["preset"])
        model_flags = _model_flags(args)
        if model_flags:
            raise TianciError(f"--resume: model flags cannot change on resume ({', '.join(model_flags)})")
        preset = apply_overrides(preset, args)
        # --data given (also as --data=DIR, or via main(argv)) wins; else the data the run was trained on
        data = args.data or saved.get("data", {}).get("dir") or _default_data()
        result = train(preset, data, args.resume, resume=True)
    else:
        if not args.out:
            raise TianciError("--out RUN_DIR is required (or --resume RUN_DIR)")
        if args.init_from:
            from ..finetune import source_preset

            if Path(args.init_from).resolve() == Path(args.out).resolve():
                raise TianciError("--init-from and --out name the same run: the new run needs its own directory",
                                  param="out")
            model_flags = _model_flags(args)
            if model_flags:
                raise TianciError(f"--init-from: the model is the source run's; its flags cannot change "
                                  f"({', '.join(model_flags)})", param="init_from")
            preset = apply_overrides(source_preset(args.init_from), args)
        else:
            preset = apply_overrides(load_preset(args.preset), args)
        result = train(preset, args.data or _default_data(), args.out, force=args.force, init_from=args.init_from)
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0

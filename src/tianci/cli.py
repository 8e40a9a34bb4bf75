"""The `tianci` command. Each subcommand lives in `tianci.commands.<name>` and is imported
only when used, so `tianci --help` and the counting model never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import Interrupted, TianciError

# name -> (module in tianci.commands, one-line help)
COMMANDS = {
    "prepare": ("prepare", "build the corpus (ci.txt, poems.jsonl) and encode train.bin/val.bin"),
    "train": ("train", "train a model (any ladder rung, the counting model, ci-cpu, ci-gpu)"),
    "sample": ("sample", "sample text from a trained run"),
    "compose": ("compose", "compose a ci to a chosen 词牌 (form, tone and rhyme guaranteed)"),
    "compose-eval": ("compose_eval", "measure form/tone/rhyme compliance, fluency and novelty"),
    "critic": ("critic", "fit a run's critic: composing then keeps the most human-like of its drafts"),
    "cipai": ("cipai", "show the form of a 词牌, or list the known ones"),
    "serve": ("serve", "web playground + OpenAI-compatible API"),
    "ladder": ("ladder", "train every rung of the ladder on one budget and compare"),
    "plot": ("plot", "plot loss curves of one or more runs"),
    "attention": ("attention", "draw the attention maps of a layer over a line of text"),
    "eval": ("evaluate", "a run's exact loss on its whole val (or train) split"),
    "bench": ("bench", "benchmark training and decoding speed"),
    "presets": ("presets", "list the shipped presets"),
    "export": ("export", "export a run to Hugging Face transformers (--format hf) or GGUF for llama.cpp"),
    "import": ("import_", "turn a transformers folder (gpt2/arcee/llama/qwen3) into a run"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tianci", description="填词 — GPTs for Song ci, from a counting "
                                     "bigram to a fast GPT.")
    parser.add_argument("--version", action="version", version=f"tianci {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only import the module of the command being run (keeps --help and `prepare` torch-free).
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            module = importlib.import_module(f"tianci.commands.{mod}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._run(args) or 0)
    except Interrupted as e:  # a run stopped by SIGTERM/SIGINT after saving: not an error, but not done
        print(f"tianci {args.command}: {e.render('cli')}", file=sys.stderr)
        return 128 + e.signum
    except TianciError as e:
        print(f"tianci {args.command}: error: {e.render('cli')}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tianci cipai --list | head`: the reader left; not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full, permission denied, ...: the file and the reason, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"tianci {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tianci {args.command}: interrupted", file=sys.stderr)
        return 130

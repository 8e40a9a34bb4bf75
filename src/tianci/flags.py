"""CLI flags generated from the config fields: one kebab-case flag per field of GPTConfig,
TrainConfig and NGramConfig, its help and allowed values from the field's metadata, and
`apply_overrides` to copy what the user gave onto a preset. The flags default to None, so a preset's
values show through wherever no flag was given.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import fields
from typing import Any

from .config import SECTIONS, ConfigError, Preset, allowed_text, coerce_field, load_preset, validate


def _flag(section: str, name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, sections=("model", "train", "ngram")) -> None:
    """Add one flag per config field (kebab-case), its help from the field's metadata. Defaults are
    None so presets show through; --help shows each field's value in the preset chosen by
    --preset (given before --help, else the command's default preset)."""
    seen, owner = set(), {}
    for sec in sections:
        group = parser.add_argument_group(f"{sec} config (overrides the preset)")
        for f in fields(SECTIONS[sec]):
            if f.name in seen:
                continue
            seen.add(f.name)
            t = f.type if isinstance(f.type, str) else f.type.__name__
            kw: dict[str, Any] = dict(dest=f"cfg_{sec}__{f.name}", default=None)
            if t == "bool":
                kw["action"] = argparse.BooleanOptionalAction
            elif f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            else:
                kw["type"] = {"int": int, "float": float}.get(t, str)
                kw["metavar"] = t.upper()
            kw["help"] = _flag_help(f, sec, None)
            owner[kw["dest"]] = (sec, f)
            group.add_argument(_flag(sec, f.name), **kw)

    class ConfigHelp(argparse.Action):
        def __init__(self, option_strings, dest, **kw):
            super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                             help="show this help (with --preset NAME first: that preset's values) and exit")

        def __call__(self, parser, namespace, values, option_string=None):
            name = getattr(namespace, "preset", None)
            try:
                preset = load_preset(name) if name else None
            except ConfigError:
                preset = None
            for action in parser._actions:
                if action.dest in owner:
                    sec, f = owner[action.dest]
                    action.help = _flag_help(f, sec, preset)
            parser.print_help()
            parser.exit()

    group, before = parser._optionals, parser._optionals.conflict_handler
    group.conflict_handler = "resolve"  # replace the stock -h/--help (argparse has no public way)
    group.add_argument("-h", "--help", action=ConfigHelp)
    group.conflict_handler = before


def _flag_help(f: dataclasses.Field, sec: str, preset: Preset | None) -> str:
    allowed = allowed_text(f)
    text = f.metadata.get("help", "")
    if allowed and not f.metadata.get("choices"):  # argparse lists choices itself
        text += f"; {allowed}"
    if preset is not None:
        text += f" ({preset.name}: {getattr(getattr(preset, sec), f.name)!r})"
    else:
        text += f" (default {f.default!r})"
    return text.replace("%", "%%")


def apply_overrides(preset: Preset, args: argparse.Namespace) -> Preset:
    """Copy every flag the user gave onto the preset's dataclasses, then validate."""
    for key, value in vars(args).items():
        if not key.startswith("cfg_") or value is None:
            continue
        sec, name = key[4:].split("__", 1)
        # one flag per name: a field that two sections share (seed) is set in both
        for obj in (getattr(preset, s) for s in SECTIONS):
            f = next((f for f in fields(obj) if f.name == name), None)
            if f is not None:
                setattr(obj, name, coerce_field(f, value, _flag(sec, name)))
    return validate(preset)

from __future__ import annotations

from ..config import load_preset, preset_names


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    for name in preset_names():
        pr = load_preset(name)
        print(f"{name:<14} {pr.kind:<6} {pr.description}")
    return 0

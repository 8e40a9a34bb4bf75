"""The shape of the package, drawn from its imports: the flat core never reaches up into the packages
built on it, the packages never reach into the CLI's commands, and no module grows past ~400 lines.

The graph is read with `ast` (every import, also those inside functions), so the test needs no
import of tianci and sees what a reader of the code sees."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "tianci"
PACKAGES = ("serve", "ci", "measure", "interop", "commands")
ENTRY = ("tianci.cli", "tianci.__main__")  # the CLI's entry: dispatching to commands/ is its job
MAX_LINES = 400

# (importer, imported room) -> why the arrow is right. Empty: every back-arrow found so far was fixed.
ALLOWED_BACK_ARROWS: dict[tuple[str, str], str] = {}
# module path (relative to src/) -> why it may be longer than MAX_LINES. Empty for the same reason.
ALLOWED_LONG: dict[str, str] = {}


@dataclass(frozen=True)
class Arrow:
    importer: str  # dotted module name
    target: str  # dotted module (or package) name
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def arrows() -> list[Arrow]:
    """Every import of a tianci module by a tianci module, relative imports resolved."""
    known = modules()
    out = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out += [Arrow(name, a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "tianci"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "tianci":
                    continue
                for a in node.names:  # `from . import sources` imports the module tianci.sources
                    sub = f"{target}.{a.name}"
                    out.append(Arrow(name, sub if sub in known else target, node.lineno))
    return out


def room(module: str) -> str:
    """The package's name, or core for the flat top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "core"


def back_arrows() -> list[str]:
    bad = []
    for a in arrows():
        src, dst = room(a.importer), room(a.target)
        if a.importer in ENTRY or src == dst or (a.importer, dst) in ALLOWED_BACK_ARROWS:
            continue
        if src == "core" or dst == "commands":
            bad.append(f"{a.importer}:{a.line} imports {a.target} ({src} -> {dst})")
    return bad


def test_the_core_never_imports_the_packages_and_nothing_imports_commands():
    """Guards a back-arrow: a core module (model, train, generate, tokenizer, corpus, config,
    checkpoint, runtime, files, sources, errors, ...) importing from serve/, ci/, measure/, interop/
    or commands/, or a package importing commands/ -- the layering the README's Layout draws would
    then be a picture, not the code."""
    assert back_arrows() == []


def test_the_check_sees_a_back_arrow(monkeypatch):
    """Guards the layout test passing because it reads no imports (a resolver bug would make every
    arrow look harmless): the real graph has arrows into every package, and a core module that
    imported serve/ would be reported."""
    found = arrows()
    assert {room(a.target) for a in found if room(a.importer) == "commands"} >= {"serve", "ci", "measure", "interop"}
    assert any(a.importer == "tianci.corpus" and a.target == "tianci.sources" for a in found)
    fake = Arrow("tianci.train", "tianci.serve.app", 1)
    monkeypatch.setitem(globals(), "arrows", lambda: found + [fake])
    assert back_arrows() == ["tianci.train:1 imports tianci.serve.app (core -> serve)"]


def test_no_module_is_over_400_lines():
    """Guards modules growing into several jobs (train.py reached 441 lines, config.py 427): each
    module stays under ~400 lines, split along a real seam when it grows."""
    long = {str(p.relative_to(SRC)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert {k: v for k, v in long.items() if k not in ALLOWED_LONG} == {}

"""More to learn from: the classical verse of chinese-poetry beside the ci, for pretraining
(`tianci prepare --corpus classical`; then `tianci train --init-from RUN` fine-tunes on ci).

    全唐诗   全唐诗/poet.tang.<N>.json   57,607 poems, traditional characters (converted by OpenCC)
    全宋诗   全唐诗/poet.song.<N>.json   254,248 poems, traditional; 109 MB, upstream only here
    元曲     元曲/yuanqu.json            11,057 散曲
    诗经     诗经/shijing.json           305 poems, no author (佚名)
    楚辞     楚辞/chuci.json             65 poems

Every file comes through tianci.sources like the ci (the flag, TIANCI_POETRY_SOURCE, the
remembered source, else upstream, downloaded once into the cache). A local copy without a part
(most lack 全宋诗) loses only that part, which `load_classical` reports; a part with only some
of its files is a broken copy (DataError). Each poem's title line carries its genre's tag
(tianci.header): `【诗】帝京篇十首 一 太宗皇帝`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import sources
from .corpus import CI_FILES, NANTANG, Poem, load_poems
from .errors import DataError
from .files import json_objects, read_json
from .header import MARKS


@dataclass(frozen=True)
class Part:
    name: str
    genre: str  # tianci.header.GENRES
    files: tuple[str, ...]
    traditional: bool = False
    lines_key: str = "paragraphs"  # 诗经 and 楚辞 call their lines "content"
    author: str = ""  # for records without one


def _numbered(stem: str, count: int) -> tuple[str, ...]:
    return tuple(f"全唐诗/{stem}.{n}.json" for n in range(0, count * 1000, 1000))


PARTS = (
    Part("全唐诗", "shi", _numbered("poet.tang", 58), traditional=True),
    Part("全宋诗", "shi", _numbered("poet.song", 255), traditional=True),
    Part("元曲", "qu", ("元曲/yuanqu.json",)),
    Part("诗经", "shijing", ("诗经/shijing.json",), lines_key="content", author="佚名"),
    Part("楚辞", "chuci", ("楚辞/chuci.json",), lines_key="content"),
)


@dataclass
class Classical:
    poems: list[Poem]  # the ci first (in load_poems' order), then each part's
    counts: dict[str, int] = field(default_factory=dict)  # part name (and "宋词") -> poems
    missing: list[str] = field(default_factory=list)  # parts the local copy lacks


def _converter():
    """OpenCC's traditional -> simplified converter (the `classical` extra)."""
    try:
        import opencc
    except ImportError:
        raise DataError("全唐诗 and 全宋诗 are in traditional characters and converting them needs OpenCC",
                        hints={"cli": "pip install 'tianci[classical]'"}) from None
    try:
        return opencc.OpenCC("t2s").convert
    except Exception:  # older builds of the C++ binding name the config file
        return opencc.OpenCC("t2s.json").convert


def read_part_file(path: Path, part: Part, convert, skipped: list[str] | None = None) -> list[Poem]:
    """One file of a part as Poems of its genre. Errors name the file and the poem index."""
    data = read_json(path, f"{part.name} file")
    poems = []
    for k, d in enumerate(json_objects(data, path)):
        pars = d.get(part.lines_key)
        if not isinstance(pars, list) or not all(isinstance(s, str) for s in pars):
            raise DataError(f"{path}: poem index {k}: {part.lines_key!r} must be a list of strings")
        # a header mark inside a poem (〈全唐诗〉 in an editor's note) would read as a theme mark
        lines = [c for s in pars for ln in s.splitlines() if (c := "".join(ch for ch in ln.strip() if ch not in MARKS))]
        title = d.get("title") if isinstance(d.get("title"), str) else ""
        author = d.get("author") if isinstance(d.get("author"), str) and d["author"].strip() else part.author
        if not lines:
            if skipped is not None:
                skipped.append(f"{path}: poem index {k} ({title}): no paragraphs")
            continue
        if part.traditional:
            # one call per poem: the 3 fields joined by a line break OpenCC leaves alone
            title, author, *lines = convert("\n".join([title, author, *lines])).split("\n")
        # a line break or run of spaces in the title, or a header mark, would blur the title line
        title = " ".join("".join(c for c in title if c not in MARKS).split()) or "无题"
        author = "".join("".join(c for c in author if c not in MARKS).split())
        poems.append(Poem("", author, lines, title, part.genre))
    return poems


def load_classical(source=None, *, skipped: list[str] | None = None, progress: bool = False) -> Classical:
    """The ci (load_poems) then every part of PARTS the source has."""
    rels = [r for p in PARTS for r in p.files]
    root, src, how = sources.local_tree("poetry", CI_FILES + [NANTANG] + rels, source, progress=progress)
    ci = load_poems(src, skipped=skipped)
    out = Classical(list(ci), {"宋词": len(ci)})
    convert = None
    for part in PARTS:
        have = [r for r in part.files if (root / r).is_file()]
        if not have:
            out.missing.append(part.name)
            continue
        if len(have) < len(part.files):
            gone = next(r for r in part.files if r not in have)
            raise DataError(f"poetry source {src} has {len(have)} of the {len(part.files)} files of {part.name} "
                            f"(no {gone}): a broken copy; {sources.hint('poetry')}")
        if part.traditional and convert is None:
            convert = _converter()
        n0 = len(out.poems)
        for r in part.files:
            out.poems.extend(read_part_file(root / r, part, convert, skipped))
        out.counts[part.name] = len(out.poems) - n0
    return out

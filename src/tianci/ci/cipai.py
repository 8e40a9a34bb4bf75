"""词牌 patterns: the 817 tunes (2294 variants) of the 词谱 in hulbji/couyun (MIT), plus corpus skeletons.

Here: the 词谱 index and its lazy per-tune variant files, name resolution (aliases, variant characters,
pinyin, suggestions) and the choice of variant; the shape of a form itself is in `tianci.ci.form`.

Sources: the `cipu` source of tianci.sources (--cipu-source, TIANCI_CIPU_SOURCE, the remembered source
or the upstream URL, cached after the first download)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from functools import cached_property

from .corpus_stats import CorpusStats, infer_form_marks
from .. import sources
from ..errors import DataError, NotFoundError, ParameterError, TianciError
# the form's shape lives in .form; re-exported here, where callers have always found it
from .form import (Cell, CellKind, Form, Variant, allowed_marks, parse_variant, render,  # noqa: F401
                   rhyme_group_count)
from .tones import Phonology, is_han



# Corpus titles that spell a 词谱 name with a variant character (一翦梅 / 一剪梅, 六么令 / 六幺令,
# 抛球乐 / 抛毬乐, 锁窗寒 / 琐窗寒, 剔银灯 / 剔银镫, 红林擒近 / 红林檎近).
VARIANT_CHARS = str.maketrans("翦么球锁灯擒", "剪幺毬琐镫檎")
# Other names of a tune that the 词谱's index does not list (each checked against the corpus: the
# poems under the alias have the target's length): 思佳客 = 鹧鸪天, 摸鱼子 = 摸鱼儿, 卖花声 = 浪淘沙令.
ALIASES = {"思佳客": "鹧鸪天", "摸鱼子": "摸鱼儿", "卖花声": "浪淘沙令"}


class UnknownCipaiError(NotFoundError):
    """A 词牌 neither the 词谱 nor the corpus knows; `.suggestions` holds the closest names."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name, self.suggestions = name, suggestions
        hint = f"; did you mean {' / '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown 词牌 {name!r}{hint}", param="cipai", allowed="a known 词牌 name, alias or pinyin",
                         hints={"cli": "`tianci cipai --list` lists them", "api": "GET /api/cipai lists them"})


def variant_hints(name: str) -> dict[str, str]:
    """Where each front end shows a 词牌's variants (for errors about `variant`)."""
    return {"cli": f"`tianci cipai {name} --variant N` shows variant N; pick one with --variant N",
            "api": f"GET /api/cipai/{name}?variant=N shows variant N; pick one with \"variant\": N"}


@dataclass
class Entry:
    idx: int | None  # ci_index idx; None for a corpus-only 词牌
    names: list[str]  # first = canonical
    pinyins: list[str]
    titles: list[str]  # corpus titles that map here


class CiPu:
    """The 词谱 (lazy per-tune variant files) joined with optional corpus statistics."""

    def __init__(self, index: list[dict], source: str, corpus: CorpusStats | None = None,
                 phon: Phonology | None = None):
        self.source, self.corpus, self.phon = source, corpus, phon
        self.entries: list[Entry] = []
        self.by_name: dict[str, Entry] = {}
        for e in index:
            names = list(dict.fromkeys([*e.get("names", []), *e.get("names_trad", [])]))
            ent = Entry(int(e["idx"]), names, list(e.get("pinyins", [])) + [e.get("full", "")], [])
            self.entries.append(ent)
            for nm in names:
                self.by_name.setdefault(nm, ent)
        self._variants: dict[int, list[Variant | None]] = {}
        self._forms: dict[tuple[str, int | None], Form] = {}
        # forms(name), by the name's entry: ordering the variants counts the corpus's skeletons
        # (~30 ms for 浣溪沙), which a server otherwise pays again on every compose request
        self._all_forms: dict[str, tuple[Form, ...]] = {}
        self._listing: list[ListingRow] | None = None  # built on first use; entries never change after here
        if corpus is not None:
            for title in corpus.by_title:
                ent = self._match_title(title)
                if ent is None:
                    ent = Entry(None, [title], [], [])
                    self.entries.append(ent)
                    self.by_name[title] = ent
                ent.titles.append(title)

    @classmethod
    def load(cls, source: str | os.PathLike | None = None, corpus: CorpusStats | None = None,
             phon: Phonology | None = None) -> "CiPu":
        src = sources.resolve("cipu", source)[0]
        index = sources.read_json("cipu", "ci_index.json", src, "词谱 index")
        if not isinstance(index, list) or not index:
            raise TianciError(f"{src}/ci_index.json is not a list of 词牌 entries")
        return cls(index, src, corpus, phon)

    def _match_title(self, title: str) -> Entry | None:
        """'望江南・忆江南' → 望江南; a plain name as is; then the same with variant characters
        (一翦梅 → 一剪梅) and the well-known other names the 词谱's index lacks (思佳客 → 鹧鸪天)."""
        parts = [title, *re.split(r"[・·]", title)]
        for part in parts:
            if part in self.by_name:
                return self.by_name[part]
        for key in (lambda p: p.translate(VARIANT_CHARS), ALIASES.get):  # only onto 词谱 entries
            for part in parts:
                k = key(part)
                if k and k in self.by_name and self.by_name[k].idx is not None:
                    return self.by_name[k]
        return None

    def variants(self, ent: Entry) -> list[Variant | None]:
        if ent.idx is None:
            return []
        if ent.idx not in self._variants:
            data = sources.read_json("cipu", f"ci_list/cipai_{ent.idx}.json", self.source, "词谱 pattern")
            vs = []
            for i, v in enumerate(data):
                try:
                    vs.append(parse_variant(v, f"{self.source}/ci_list/cipai_{ent.idx}.json variant {i}"))
                except (TianciError, KeyError, TypeError):
                    vs.append(None)  # one inconsistent variant (瑞鹤仙 #14) must not hide the others
            self._variants[ent.idx] = vs
        return self._variants[ent.idx]

    def count(self, ent: Entry) -> int:
        if self.corpus is None:
            return 0
        return sum(len(self.corpus.by_title.get(t, [])) for t in ent.titles)

    @cached_property
    def _pinyin_map(self) -> dict[str, list[str]]:
        m: dict[str, list[str]] = {}
        for ent in self.entries:
            for py in ent.pinyins:
                if py:
                    m.setdefault(py.lower(), []).append(ent.names[0])
        return m

    def suggest(self, name: str, n: int = 5) -> list[str]:
        """Closest names: the alias' canonical name, fuzzy matches, pinyin (typed or same-sounding)."""
        out: list[str] = []
        allnames = list(self.by_name)
        out += [self.by_name[m].names[0] for m in difflib.get_close_matches(name, allnames, n, 0.5)]
        keys = [name.lower().replace(" ", "")]
        if any(is_han(c) for c in name):
            try:
                from pypinyin import lazy_pinyin

                keys = ["".join(lazy_pinyin(name))]
            except ImportError:
                keys = []
        for k in keys:
            out += self._pinyin_map.get(k, [])
            for m in difflib.get_close_matches(k, list(self._pinyin_map), n, 0.75):
                out += self._pinyin_map[m]
        return list(dict.fromkeys(out))[:n]

    def resolve(self, name: str) -> Entry:
        name = name.strip()
        ent = self.by_name.get(name) or self._match_title(name) or self._pinyin_exact(name)
        if ent is None:
            raise UnknownCipaiError(name, self.suggest(name))
        return ent

    def _pinyin_exact(self, name: str) -> Entry | None:
        key = name.lower().replace(" ", "")
        full = [e for e in self.entries if e.pinyins and e.pinyins[-1] == key]  # `full` is last
        hits = [self.by_name[n] for n in self._pinyin_map.get(key, [])]
        return full[0] if full else hits[0] if len(hits) == 1 else None

    def form(self, name: str, variant: int | None = None) -> Form:
        """The form to fill: the chosen 词谱 variant, else the corpus' most common skeleton."""
        ent = self.resolve(name)
        key = (ent.names[0], variant)
        if key not in self._forms:
            self._forms[key] = self._form(ent, variant)
        return self._forms[key]

    def forms(self, name: str) -> list[Form]:
        """Every usable form of a 词牌: the default (`form(name)`) first, then the other 词谱 variants
        of the same pattern entry, those the corpus writes most first (poems with exactly the
        variant's skeleton, then with its paragraph lengths), else in the 词谱's order; each under the
        default's title."""
        key = self.resolve(name).names[0]
        if key not in self._all_forms:
            self._all_forms[key] = tuple(self._all_forms_of(name))
        return list(self._all_forms[key])

    def _all_forms_of(self, name: str) -> list[Form]:
        default = self.form(name)
        if default.source != "词谱":
            return [default]
        ent = self.by_name[default.name]
        sk_counts = self.corpus.skeletons(self.resolve(name).titles) if self.corpus is not None else {}
        strip = lambda lines: tuple(s.count("*") for s in lines)  # noqa: E731
        lengths: dict[tuple[int, ...], int] = {}
        for sk, c in sk_counts.items():
            lengths[strip(sk)] = lengths.get(strip(sk), 0) + c
        others = [(i, v) for i, v in enumerate(self.variants(ent)) if v is not None and i != default.variant]
        others.sort(key=lambda iv: (-sk_counts.get(iv[1].lines, 0), -lengths.get(strip(iv[1].lines), 0), iv[0]))
        return [default] + [Form(ent.names[0], default.title, "词谱", i, default.n_variants, v.lines, v.tones,
                                 v.rhyme, v.example, default.corpus_count, v.repeat) for i, v in others]

    def _form(self, ent: Entry, variant: int | None) -> Form:
        vs = self.variants(ent)
        sk_counts = self.corpus.skeletons(ent.titles) if self.corpus is not None else {}
        title = max(ent.titles, key=lambda t: len(self.corpus.by_title[t])) if ent.titles else ent.names[0]
        if variant is not None and not 0 <= variant < len(vs):
            if not vs:
                raise ParameterError("variant", variant, "none", f"词牌 {ent.names[0]} is not in the 词谱: "
                                     "its form comes from the corpus")
            raise ParameterError("variant", variant, f"0..{len(vs) - 1}", f"词牌 {ent.names[0]} has "
                                 f"{len(vs)} 词谱 variant(s)", hints=variant_hints(ent.names[0]))
        count = self.count(ent)
        if vs and variant is None and (sib := self._sibling(ent, vs, sk_counts)) is not None:
            ent, vs = sib, self.variants(sib)  # e.g. 浪淘沙 poems are written in 浪淘沙令's form
        if vs:
            i = variant if variant is not None else self._choose(vs, sk_counts)
            v = vs[i]
            if v is None:
                good = [j for j, w in enumerate(vs) if w is not None]
                raise ParameterError("variant", i, ", ".join(map(str, good)), f"词牌 {ent.names[0]}'s 词谱 "
                                     f"variant {i} is inconsistent", hints=variant_hints(ent.names[0]))
            return Form(ent.names[0], title, "词谱", i, len(vs), v.lines, v.tones, v.rhyme, v.example, count,
                        v.repeat)
        if not sk_counts:
            raise TianciError(f"词牌 {ent.names[0]}: no 词谱 pattern and no well-formed poem in the corpus",
                              param="cipai", allowed="a 词牌 with a 词谱 pattern or corpus poems")
        sk = max(sk_counts, key=lambda s: (sk_counts[s], -len(s)))
        texts = [self.corpus.poems[i].paragraphs for t in ent.titles for i in self.corpus.by_title[t]]
        from .corpus_stats import skeleton

        texts = [p for p in texts if skeleton(p) == sk]
        tones, rhyme = infer_form_marks(sk, texts, self.phon)
        example = "".join(texts[0]) if texts else ""
        return Form(ent.names[0], title, "corpus", None, 0, sk, tones, rhyme, example, count)

    def _sibling(self, ent: Entry, vs: list[Variant | None], sk_counts) -> Entry | None:
        """The 令 form of a tune when the corpus writes it, not the 词谱's pattern under this name.
        The corpus titles 李煜's 54-character 浪淘沙 (浪淘沙令 in the 词谱, whose 浪淘沙 is a 28-character
        quatrain) and the 44-character 诉衷情 likewise: when most poems (at least 5) have a length no
        variant here has and the 令 entry has it, that entry gives the form."""
        total = sum(sk_counts.values())
        if total < 5:
            return None
        by_len: dict[int, int] = {}
        for sk, c in sk_counts.items():
            n = sum(line.count("*") for line in sk)
            by_len[n] = by_len.get(n, 0) + c
        n, c = max(by_len.items(), key=lambda kv: kv[1])
        if 2 * c <= total or any(v is not None and len(v.tones) == n for v in vs):
            return None
        sib = self.by_name.get(ent.names[0] + "令")
        if sib is None or sib is ent or sib.idx is None:
            return None
        return sib if any(v is not None and len(v.tones) == n for v in self.variants(sib)) else None

    @staticmethod
    def _choose(vs: list[Variant], sk_counts) -> int:
        """The variant matching the most common corpus skeleton exactly, else its paragraph lengths,
        else its length; else the first (the 词谱's 正体)."""
        first = next((i for i, v in enumerate(vs) if v is not None), None)
        if first is None:
            raise DataError("every 词谱 variant of this 词牌 is inconsistent (ge_lyu_str vs ci_sep)")
        if not sk_counts:
            return first
        strip = lambda lines: tuple(s.count("*") for s in lines)  # noqa: E731
        for sk, _ in sorted(sk_counts.items(), key=lambda kv: -kv[1])[:3]:
            for key in (lambda x: x, strip, lambda x: sum(strip(x))):
                for i, v in enumerate(vs):
                    if v is not None and key(v.lines) == key(sk):
                        return i
        return first

    def listing(self) -> list["ListingRow"]:
        """Every 词牌, most common in the corpus first (then by name): the one listing behind
        `tianci cipai --list` and the server's GET /api/cipai."""
        if self._listing is None:
            rows = [ListingRow(e.names[0], tuple(e.names[1:]), "词谱" if e.idx is not None else "corpus",
                               self.count(e), tuple(dict.fromkeys(p for p in e.pinyins if p)))
                    for e in self.entries]
            self._listing = sorted(rows, key=lambda r: (-r.count, r.name))
        return list(self._listing)


@dataclass(frozen=True)
class ListingRow:
    """One 词牌 in `CiPu.listing`."""

    name: str                # canonical name
    aliases: tuple[str, ...]
    source: str              # "词谱": it has 词谱 patterns; "corpus": its form is inferred from the poems
    count: int               # poems of it in the corpus (0 without one)
    pinyin: tuple[str, ...]  # the 词谱's pinyin spellings (full and abbreviated), for search


def data_dir_of_run(run_dir) -> str | None:
    """The data directory a GPT run was trained on (config.json's data.dir), if it still exists."""
    import json
    from pathlib import Path

    try:
        d = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))["data"]["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return d if (Path(d) / "poems.jsonl").is_file() else None


def poems_for_run(run_dir, data=None) -> str:
    """`data` if given, else the run's data directory; a TianciError when neither holds poems.jsonl
    (compose-eval and critic compare the run's poems with real ones: they need the corpus)."""
    data = data or data_dir_of_run(run_dir)
    if data is None:
        raise TianciError(f"no real poems to compare with: {run_dir}/config.json names no data directory with "
                          "poems.jsonl", param="data", allowed="poems.jsonl or a prepared data directory",
                          hints={"cli": "give one with --data"})
    return data


def open_cipu(source=None, data=None, rhyme_source=None, run_dir=None) -> CiPu:
    """词谱 + phonology + corpus statistics. `data`: poems.jsonl, its directory or a chinese-poetry
    directory; default: the run's data directory, else ./data/ci when it was prepared there."""
    from pathlib import Path

    from .corpus_stats import load_corpus
    from .tones import load_phonology

    if data is None and run_dir is not None:
        data = data_dir_of_run(run_dir)
    if data is None and (Path("data/ci") / "poems.jsonl").is_file():
        data = "data/ci"
    phon = load_phonology(rhyme_source)
    return CiPu.load(source, load_corpus(data), phon)

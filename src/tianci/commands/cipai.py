"""`tianci cipai 浣溪沙` shows a form; `tianci cipai --list` lists the known 词牌 with corpus counts."""

from __future__ import annotations

from ..errors import TianciError


def add_arguments(p) -> None:
    p.add_argument("name", nargs="?", help="词牌 name, alias or pinyin (e.g. 浣溪沙, huanxisha)")
    p.add_argument("--list", action="store_true", help="list the known 词牌, most common in the corpus first")
    p.add_argument("--variant", type=int, default=None, help="词谱 variant index (default: the one the "
                   "corpus uses most)")
    p.add_argument("--cipu-source", default=None, help="词谱 directory or URL (default TIANCI_CIPU_SOURCE, "
                   "else upstream hulbji/couyun)")
    p.add_argument("--rhyme-source", default=None, help="rhyme tables (default TIANCI_RHYME_SOURCE)")
    p.add_argument("--data", default=None, help="poems.jsonl or its data directory (or a chinese-poetry "
                   "directory) for corpus counts and skeletons (default data/ci when present)")


def run(args) -> int:
    from ..ci.cipai import open_cipu, render, rhyme_group_count

    if not args.list and not args.name:
        raise TianciError("give a 词牌 name (e.g. `tianci cipai 浣溪沙`) or --list", param="name",
                          allowed="a 词牌 name, alias or pinyin")
    cp = open_cipu(args.cipu_source, args.data, args.rhyme_source)
    if args.list:
        for row in cp.listing():
            alias = f"  ({'、'.join(row.aliases)})" if row.aliases else ""
            print(f"{row.count:6d}  {row.name}{'' if row.source == '词谱' else '  [corpus only]'}{alias}")
        return 0
    f = cp.form(args.name, args.variant)
    which = (f"词谱 variant {f.variant} of {f.n_variants}" if f.source == "词谱"
             else "derived from the corpus (no 词谱 pattern)")
    print(f"{f.name}  ({f.title})  {f.n_chars} characters, {len(f.lines)} lines, "
          f"{rhyme_group_count(f)} rhyme group(s); {which}; {f.corpus_count} poems in the corpus")
    legend = "○ 平  ● 仄  ◐ 中 (either)  A/B… rhyme (a new letter = a rhyme change)"
    if any(r >= 0 for r in f.repeat):
        legend += "  叠 = an earlier character (or a whole clause) again"
    print(legend + "\n")
    print(render(f))
    if f.example:
        print(f"\n例: {f.example}")
    return 0

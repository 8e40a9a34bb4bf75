"""`tianci prepare`: build the ci corpus and encode it to train.bin/val.bin (see tianci.corpus)."""

from __future__ import annotations

import sys
import time

from ..corpus import Corpus, build, load_poems, load_texts
from ..errors import DataError, TianciError


def add_arguments(p) -> None:
    p.add_argument("--source", default=None,
                   help="local chinese-poetry directory or base URL (default: $TIANCI_POETRY_SOURCE, else the "
                        "source given last time, else the upstream GitHub raw files, downloaded once)")
    p.add_argument("--text", nargs="+", metavar="FILE", default=None,
                   help="use these UTF-8 text files as the corpus instead (documents = blank-line blocks)")
    p.add_argument("--corpus", choices=("ci", "classical"), default="ci",
                   help="ci: 宋词 + 南唐 (default); classical: also 全唐诗, 全宋诗 (where the source has it), 元曲, "
                        "诗经, 楚辞 for pretraining, each title line tagged with its genre; val stays ci")
    p.add_argument("--themes", type=float, default=0.0, metavar="FRACTION",
                   help="write 1-3 words of each poem into the title line of this fraction of the train "
                        "poems, e.g. 0.8 (for `compose --theme`; val poems never get them; default 0)")
    p.add_argument("--out", default="data/ci", help="data directory to write (default data/ci)")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default 8192)")
    p.add_argument("--split", choices=("poem", "tail"), default="poem",
                   help="poem: seeded shuffle of whole poems (default); tail: the tutorial's last part")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--force", action="store_true",
                   help="add tianci's files to a non-empty folder that is not a tianci data directory "
                        "(never over a file tianci did not write)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    t0 = time.time()
    progress = not args.quiet and sys.stderr.isatty()
    if args.text:
        if args.corpus != "ci":
            raise TianciError("give --text or --corpus, not both", param="corpus")
        corpus = Corpus(docs=load_texts(args.text), source=" ".join(args.text))
        if args.split == "poem" and len(corpus.docs) == 1:  # said before a tokenizer is trained for nothing
            raise _one_document(corpus.source, corpus.docs[0], args.val_fraction)
    else:
        from ..sources import resolve

        source = resolve("poetry", args.source)[0]
        skipped: list[str] = []
        if args.corpus == "classical":
            from ..classical import load_classical

            cl = load_classical(args.source, skipped=skipped, progress=not args.quiet)
            poems = cl.poems
            print("classical: " + ", ".join(f"{k} {v:,}" for k, v in cl.counts.items()) +
                  "".join(f"; {m} not in {source}: skipped (give an upstream --source to add it)"
                          for m in cl.missing), file=sys.stderr)
        else:
            poems = load_poems(args.source, skipped=skipped, progress=not args.quiet)
        corpus = Corpus([p.text() for p in poems], source, poems, skipped)
        for s in skipped[:10]:
            print(f"skipped {s}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"... and {len(skipped) - 10} more skipped", file=sys.stderr)
    meta = build(corpus, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, split=args.split,
                 val_fraction=args.val_fraction, seed=args.seed, force=args.force, progress=progress,
                 themes=args.themes, extra_meta={"corpus": args.corpus} if args.corpus != "ci" else None)
    chars = meta["train_chars"] + meta["val_chars"]
    print(f"poems {meta['n_poems']:,} (train {meta['n_train']:,}, val {meta['n_val']:,}; "
          f"skipped {meta['skipped']['no_paragraphs']})  chars {chars:,}  "
          f"vocab {meta['vocab_size']:,} ({meta['tokenizer']})")
    print(f"split {meta['split']}: train {meta['train_tokens']:,} tokens / {meta['train_chars']:,} chars, "
          f"val {meta['val_tokens']:,} tokens / {meta['val_chars']:,} chars  ({meta['dtype']})")
    print(f"wrote {args.out}/ (ci.txt, train.bin, val.bin, tokenizer.json, meta.json) in {time.time() - t0:.1f}s")
    return 0


def _one_document(source: str, doc: str, val_fraction: float) -> DataError:
    """A text without blank lines is one document, and the per-poem split needs two (issue 10: the
    message was "needs at least 2 poems/documents, got 1", which did not say why a file of many
    poems counted as one): what was found and what to do."""
    lines, chars = doc.count("\n") + 1, len(doc) - doc.count("\n")
    return DataError(f"{source}: {lines:,} line{'s' * (lines != 1)}, {chars:,} characters and no blank line, so "
                     "1 document: a per-poem split needs at least 2, separated by blank lines", param="text",
                     hints={"cli": "put a blank line between poems (or documents), or use --split tail to hold "
                                   f"out the last {val_fraction:.0%} of the text instead"})

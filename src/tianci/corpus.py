"""The corpus: Song ci from chinese-poetry (or any UTF-8 text), as text and as token ids.

`tianci prepare` writes, into one data directory:
  ci.txt          the tutorial's format: a title line `词牌 作者`, one paragraph per line,
                  a blank line after every poem (so the text of poem i is `title\\nline\\n...line\\n\\n`)
  poems.jsonl     one poem a line: rhythmic, author, paragraphs (title, theme if any) and split
                  (train|val); a poem of another genre (`--corpus classical`) has genre and title
                  instead of rhythmic
  train.bin/val.bin  raw little-endian uint16 token ids (uint32 if the vocabulary is larger), as
                  nanoGPT: np.fromfile(path, dtype=np.uint16) reads them
  tokenizer.json  char table or Hugging Face BPE (see tianci.tokenizer)
  meta.json       sizes, counts and how the split was made

The split is by whole poem (seeded shuffle) so no poem is in both train and val; `split="tail"`
is the tutorial's: the last val_fraction of the text. Only ci goes to val: the classical verse
added by `--corpus classical` (tianci.classical) all trains, and the ci val split is the same
poems as a ci-only corpus's, so val losses compare. Title lines are written by tianci.header. The vocabulary is built from the whole
corpus, as in the tutorial, so val never holds an unknown character.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import sources
from .errors import DataError, TianciError
from .files import MANIFEST, Manifest, Staging, atomic_write, json_objects, read_text, salvage
from .header import CI, Header
from .tokenizer import BPETokenizer, CharTokenizer

CI_FILES = [f"宋词/ci.song.{n}.json" for n in range(0, 22000, 1000)]
NANTANG = "五代诗词/nantang/poetrys.json"
OUTPUTS = ("ci.txt", "poems.jsonl", "train.bin", "val.bin", "tokenizer.json", "meta.json")


@dataclass
class Poem:
    rhythmic: str  # the 词牌 (tune); "" for another genre
    author: str
    paragraphs: list[str]
    title: str | None = None
    genre: str = CI  # tianci.header.GENRES

    def header(self, theme: tuple[str, ...] = ()) -> Header:
        return Header(self.rhythmic if self.genre == CI else self.title or "无题", self.author, self.genre, theme)

    def text(self, theme: tuple[str, ...] = ()) -> str:
        """The poem in ci.txt's format, without the blank line that follows it."""
        return "\n".join([self.header(theme).text(), *self.paragraphs])


@dataclass
class Corpus:
    docs: list[str]  # one text per poem/document, without the trailing blank line
    source: str
    poems: list[Poem] | None = None  # None for plain-text corpora
    skipped: list[str] = field(default_factory=list)  # "file: poem index i: reason"


# ----------------------------------------------------------------------------- reading poems

def _file_number(p: Path) -> int:
    m = re.search(r"\.(\d+)\.json$", p.name)
    return int(m.group(1)) if m else -1


def poem_files(root: Path) -> list[Path]:
    """The ci files of a local chinese-poetry copy, numerically sorted, then 南唐 (if present)."""
    if not root.is_dir():
        raise DataError(f"poetry source {root} is not a directory; {sources.hint('poetry')}")
    files = sorted((root / "宋词").glob("ci.song.*.json"), key=_file_number)
    if not files:
        raise DataError(f"poetry source {root} has no 宋词/ci.song.<N>.json files; {sources.hint('poetry')}")
    return files + ([root / NANTANG] if (root / NANTANG).exists() else [])


def _locate_syntax_error(text: str) -> tuple[int, json.JSONDecodeError | str] | None:
    """Walk a JSON array element by element to find which poem a syntax error is in."""
    dec, ws = json.JSONDecoder(), re.compile(r"\s*")
    i = ws.match(text, 0).end()
    if not text.startswith("[", i):
        return None
    i, k = ws.match(text, i + 1).end(), 0
    while i < len(text) and text[i] != "]":
        try:
            _, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            return k, e
        i = ws.match(text, i).end()
        if text.startswith(",", i):
            i, k = ws.match(text, i + 1).end(), k + 1
        elif not text.startswith("]", i):
            return k, "expected ',' or ']' after it"
    return None


def read_poem_file(path: Path, skipped: list[str] | None = None) -> list[Poem]:
    """Parse one chinese-poetry JSON file. Errors name the file and the poem index."""
    text = read_text(path, "poem file")
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a list of poems") from None
    except json.JSONDecodeError as e:
        where = _locate_syntax_error(text)
        if where is None:
            raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        k, err = where
        detail = err if isinstance(err, str) else f"{err.msg} at line {err.lineno} column {err.colno}"
        raise DataError(f"{path}: malformed JSON in poem index {k}: {detail}") from None
    poems = []
    for k, d in enumerate(json_objects(data, path)):
        for key in ("rhythmic", "author"):
            if not isinstance(d.get(key), str):
                raise DataError(f"{path}: poem index {k} has no string field {key!r}")
        pars = d.get("paragraphs")
        if not isinstance(pars, list) or not all(isinstance(s, str) for s in pars):
            raise DataError(f"{path}: poem index {k}: 'paragraphs' must be a list of strings")
        # One line per paragraph, no blank lines inside a poem (blank lines separate poems).
        lines = [ln.strip() for s in pars for ln in s.splitlines() if ln.strip()]
        if not lines:
            if skipped is not None:
                skipped.append(f"{path}: poem index {k} ({d['rhythmic']} {d['author']}): no paragraphs")
            continue
        title = d.get("title") if isinstance(d.get("title"), str) else None
        poems.append(Poem(d["rhythmic"].strip(), d["author"].strip(), lines, title))
    return poems


def load_poems(source: str | os.PathLike | None = None, *, skipped: list[str] | None = None,
               progress: bool = False) -> list[Poem]:
    """All poems: 宋词 (ci.song.0 ... ci.song.21000) then 南唐 (45 poems).

    `source`: a local chinese-poetry directory or an http(s) base URL; default: see tianci.sources
    (flag, TIANCI_POETRY_SOURCE, the remembered source, the upstream URL, downloaded once into the
    cache). Poems without any paragraph are skipped and described in `skipped`."""
    root, src, how = sources.local_tree("poetry", CI_FILES + [NANTANG], source, progress=progress)
    poems = []
    for f in poem_files(root):
        poems.extend(read_poem_file(f, skipped))
    if how in ("flag", "env"):
        sources.remember("poetry", src)
    return poems


def load_texts(paths) -> list[str]:
    """Plain UTF-8 files as a corpus: each blank-line-separated block is one document."""
    docs = []
    for p in map(Path, paths):
        text = read_text(p, "text file").replace("\r\n", "\n").replace("\r", "\n")
        docs.extend(d.strip("\n") for d in re.split(r"\n[ \t]*\n", text) if d.strip())
    return docs


# ----------------------------------------------------------------------------- building

def split_poems(n: int, val_fraction: float, seed: int) -> list[bool]:
    """is_val for each of n documents: a seeded shuffle, round(n * val_fraction) go to val."""
    if n < 2:
        raise TianciError(f"a per-poem split needs at least 2 poems/documents, got {n} (use --split tail)")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    is_val = [False] * n
    for i in order[:n_val]:
        is_val[i] = True
    return is_val


def _check_out(out: Path, force: bool) -> None:
    """May `prepare` write the data directory `out`? Yes when it is absent, empty or a tianci data
    directory; a folder of someone else's files only with force, and never over a file of theirs."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    salvage(out)  # finish or undo a killed prepare first
    if not out.is_dir() or not any(out.iterdir()):
        return
    man = Manifest.read(out) or _adopt_legacy_data(out)
    if man is not None and man.kind == "data":
        if Manifest.read(out) is None:
            man.save()  # a data dir from a tianci without manifests: these are its files
        return
    if man is not None:
        raise DataError(f"--out {out} is a tianci {man.kind} directory, not a data directory; choose another --out")
    if not force:
        raise DataError(f"--out {out} is not empty and is not a tianci data directory; choose a new directory, "
                        "or pass --force to add tianci's files beside the ones there (none is changed)")
    clash = [n for n in (*OUTPUTS, MANIFEST) if (out / n).exists()]
    if clash:
        raise DataError(f"--out {out} holds files tianci would overwrite ({', '.join(clash)}) and did not write; "
                        "tianci never overwrites them, with or without --force: choose another --out")


def _adopt_legacy_data(out: Path) -> Manifest | None:
    """A data directory prepared before manifests existed: only tianci's file names, and a meta.json
    that is tianci's. Then those files are tianci's; else None."""
    names = [p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if not names or any(n not in OUTPUTS for n in names) or "meta.json" not in names:
        return None
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(meta, dict) and {"vocab_size", "dtype", "train_tokens", "val_tokens"} <= set(meta)):
        return None
    return Manifest(out, "data", names)


def build(corpus: Corpus, out, *, tokenizer: str = "char", vocab_size: int = 8192, split: str = "poem",
          val_fraction: float = 0.1, seed: int = 1337, force: bool = False, progress: bool = False,
          themes: float = 0.0, extra_meta: dict | None = None) -> dict:
    """Tokenize and split `corpus`, write the data directory `out`, return meta (also in meta.json).

    themes: the fraction of train poems whose title line carries 1–3 words of the poem
    (tianci.themes); val poems never do.

    The files are built in a folder beside `out` and swapped in whole (files.Staging): a kill leaves
    the old data set or the new one. Files in `out` that tianci did not write are kept."""
    if not corpus.docs:
        raise TianciError(f"the corpus from {corpus.source} is empty: no poems/documents to train on")
    if not 0 < val_fraction < 1:
        raise TianciError(f"--val-fraction={val_fraction} is not allowed: expected 0 < f < 1")
    if split not in ("poem", "tail"):
        raise TianciError(f"--split={split!r} is not allowed: expected poem|tail")
    if tokenizer not in ("char", "bpe"):
        raise TianciError(f"--tokenizer={tokenizer!r} is not allowed: expected char|bpe")
    if not 0 <= themes <= 1:
        raise TianciError(f"--themes={themes} is not allowed: expected 0 <= f <= 1", param="themes", allowed="0..1")
    poems = corpus.poems
    mixed = poems is not None and any(p.genre != CI for p in poems)
    if split == "tail" and (mixed or themes):
        raise TianciError("--split tail cannot keep val to plain ci: use --split poem with --corpus classical "
                          "or --themes", param="split", allowed="poem")
    if themes and poems is None:
        raise TianciError("--themes needs poems (theme words are drawn from each poem): not --text",
                          param="themes", allowed="0 with --text")
    import numpy as np  # only here: reading a meta.json (the counting model) stays numpy-free

    out = Path(out)
    _check_out(out, force)
    t0 = time.time()
    chunks = [d + "\n\n" for d in corpus.docs]
    is_val, theme = _split(corpus, len(chunks), split, val_fraction, seed), [()] * len(chunks)
    if themes:
        from .themes import draw_themes

        theme = draw_themes(["\n".join(p.paragraphs) for p in poems], is_val, themes, seed)
        chunks = [p.text(t) + "\n\n" if t else c for p, t, c in zip(poems, theme, chunks)]
    text = "".join(chunks)
    # The vocabulary comes from the whole corpus (as the tutorial): val has no unknown characters.
    if tokenizer == "char":
        tok = CharTokenizer.from_text(text)
    else:
        tok = BPETokenizer.train(chunks, vocab_size, show_progress=progress)

    def encode(parts: list[str]) -> list[int]:
        if tok.kind == "char":
            return tok.encode("".join(parts))
        return [i for ids in tok.encode_batch(parts) for i in ids]  # a poem's tokens never cross poems

    if split == "poem":
        train_parts = [c for c, v in zip(chunks, is_val) if not v]
        val_parts = [c for c, v in zip(chunks, is_val) if v]
    else:  # the tutorial's cut: the last val_fraction of the characters
        cut = int(len(text) * (1 - val_fraction))
        train_parts, val_parts = [text[:cut]], [text[cut:]]
        starts, pos = [], 0
        for c in chunks:
            starts.append(pos)
            pos += len(c)
        is_val = [s >= cut for s in starts]  # a poem straddling the cut counts as train
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    train_ids, val_ids = encode(train_parts), encode(val_parts)
    meta = {
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "tokenizer": tok.kind,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "train_chars": sum(map(len, train_parts)),
        "val_chars": sum(map(len, val_parts)),
        "n_poems": len(chunks),
        "n_train": is_val.count(False),
        "n_val": is_val.count(True),
        "skipped": {"no_paragraphs": len(corpus.skipped)},
        **({"genres": dict(Counter(p.genre for p in poems))} if mixed else {}),
        **({"themes": themes, "n_themed": sum(1 for t in theme if t)} if themes else {}),
        "source": corpus.source,
        "input": "poetry" if corpus.poems is not None else "text",
        "split": split,
        "val_fraction": val_fraction,
        "seed": seed,
        "tokenizer_fingerprint": tok.fingerprint(),
        **(extra_meta or {}),
    }
    stage = Staging(out, "data")
    with stage as tmp:
        _write_set(tmp, text, corpus, is_val, theme, tok, np.dtype(dtype), train_ids, val_ids, meta, t0)
        stage.owned = sorted(p.name for p in tmp.iterdir() if p.name in OUTPUTS)
    return meta


def _split(corpus: Corpus, n: int, split: str, val_fraction: float, seed: int) -> list[bool]:
    """is_val per document for the per-poem split, over the ci poems only (the same poems as a
    ci-only corpus's val); the tail split is cut later, from the text."""
    if split != "poem":
        return [False] * n
    if corpus.poems is None:
        return split_poems(n, val_fraction, seed)
    ci = [i for i, p in enumerate(corpus.poems) if p.genre == CI]
    is_val = [False] * n
    for i, v in zip(ci, split_poems(len(ci), val_fraction, seed)):
        is_val[i] = v
    return is_val


def _write_set(d: Path, text, corpus, is_val, theme, tok, dtype, train_ids, val_ids, meta, t0) -> None:
    import numpy as np

    atomic_write(d / "ci.txt", text)
    if corpus.poems is not None:
        rows = []
        for p, v, t in zip(corpus.poems, is_val, theme):
            row = ({"rhythmic": p.rhythmic} if p.genre == CI else {"genre": p.genre, "title": p.title}) | {
                "author": p.author, "paragraphs": p.paragraphs}
            if p.title and p.genre == CI:
                row["title"] = p.title
            if t:
                row["theme"] = list(t)
            row["split"] = "val" if v else "train"
            rows.append(json.dumps(row, ensure_ascii=False))
        atomic_write(d / "poems.jsonl", "\n".join(rows) + "\n")
    le = dtype.newbyteorder("<")  # nanoGPT's files are little-endian on every machine
    atomic_write(d / "train.bin", np.asarray(train_ids, dtype=le).tobytes())
    atomic_write(d / "val.bin", np.asarray(val_ids, dtype=le).tobytes())
    tok.save(d / "tokenizer.json")
    meta["seconds"] = round(time.time() - t0, 3)
    atomic_write(d / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2) + "\n")


class DataDir:
    """A prepared data directory: the one reader of what `tianci prepare` wrote (build() writes it)."""

    def __init__(self, path):
        self.path = Path(path)

    def meta(self) -> dict:
        """meta.json, checked against the token files beside it (a data set mixed from two builds,
        or a token file changed by hand, is a DataError, not an IndexError later)."""
        from .files import read_json

        path = self.path / "meta.json"
        if not path.is_file():
            raise DataError(f"{self.path} is not a prepared data directory (no meta.json): run `tianci prepare "
                            f"--out {self.path}` first")
        meta = read_json(path, "data meta")
        need = ("vocab_size", "dtype", "train_tokens", "val_tokens")
        if not isinstance(meta, dict) or any(k not in meta for k in need):
            raise DataError(f"{path} is not a tianci data meta.json (it needs {', '.join(need)})")
        size = {"uint16": 2, "uint32": 4}.get(meta["dtype"])
        if size is None:
            raise DataError(f"{path}: dtype {meta['dtype']!r} is not allowed: expected uint16|uint32")
        for split in ("train", "val"):
            b = self.path / f"{split}.bin"
            if b.is_file() and b.stat().st_size != int(meta[f"{split}_tokens"]) * size:
                raise DataError(f"{b} holds {b.stat().st_size // size:,} tokens but {path} says "
                                f"{int(meta[f'{split}_tokens']):,}: the files are from different builds; "
                                f"re-run `tianci prepare --out {self.path}`")
        return meta

    def tokenizer(self):
        """tokenizer.json, checked against meta.json (vocab size and fingerprint)."""
        from .tokenizer import load_tokenizer

        meta = self.meta()
        tok = load_tokenizer(self.path / "tokenizer.json")
        fp = meta.get("tokenizer_fingerprint")
        if tok.vocab_size != int(meta["vocab_size"]) or (fp and fp != tok.fingerprint()):
            raise DataError(f"{self.path / 'tokenizer.json'} does not match {self.path / 'meta.json'} "
                            f"(vocab {tok.vocab_size} vs {meta['vocab_size']}): re-run `tianci prepare --out "
                            f"{self.path}`")
        return tok


def read_meta(data_dir) -> dict:
    """meta.json of a data directory (see DataDir.meta)."""
    return DataDir(data_dir).meta()

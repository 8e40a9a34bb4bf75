"""The corpus: Song ci from chinese-poetry (or any UTF-8 text), as text and as token ids.

`tianci prepare` writes, into one data directory:
  ci.txt          the tutorial's format: a title line `词牌 作者`, one paragraph per line,
                  a blank line after every poem (so the text of poem i is `title\\nline\\n...line\\n\\n`)
  poems.jsonl     one poem a line: rhythmic, author, paragraphs (title if any) and split (train|val)
  train.bin/val.bin  raw little-endian uint16 token ids (uint32 if the vocabulary is larger), as
                  nanoGPT: np.fromfile(path, dtype=np.uint16) reads them
  tokenizer.json  char table or Hugging Face BPE (see tianci.tokenizer)
  meta.json       sizes, counts and how the split was made

The split is by whole poem (seeded shuffle) so no poem is in both train and val; `split="tail"`
is the tutorial's: the last val_fraction of the text. The vocabulary is built from the whole
corpus, as in the tutorial, so val never holds an unknown character.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TianciError
from .tokenizer import BPETokenizer, CharTokenizer

UPSTREAM = "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/master"
CI_FILES = [f"宋词/ci.song.{n}.json" for n in range(0, 22000, 1000)]
NANTANG = "五代诗词/nantang/poetrys.json"
OUTPUTS = ("ci.txt", "poems.jsonl", "train.bin", "val.bin", "tokenizer.json", "meta.json")
OFFLINE_HINT = ("if you are offline, point --source (or the TIANCI_POETRY_SOURCE environment variable) "
                "at a local copy of github.com/chinese-poetry/chinese-poetry: the folder holding 宋词/")


@dataclass
class Poem:
    rhythmic: str  # the 词牌 (tune)
    author: str
    paragraphs: list[str]
    title: str | None = None

    def text(self) -> str:
        """The poem in ci.txt's format, without the blank line that follows it."""
        return "\n".join([f"{self.rhythmic} {self.author}", *self.paragraphs])


@dataclass
class Corpus:
    docs: list[str]  # one text per poem/document, without the trailing blank line
    source: str
    poems: list[Poem] | None = None  # None for plain-text corpora
    skipped: list[str] = field(default_factory=list)  # "file: poem index i: reason"


# ----------------------------------------------------------------------------- reading poems

def default_source() -> str:
    return os.environ.get("TIANCI_POETRY_SOURCE") or UPSTREAM


def _file_number(p: Path) -> int:
    m = re.search(r"\.(\d+)\.json$", p.name)
    return int(m.group(1)) if m else -1


def poem_files(root: Path) -> list[Path]:
    """The ci files of a local chinese-poetry copy, numerically sorted, then 南唐 (if present)."""
    if not root.is_dir():
        raise TianciError(f"poetry source {root} is not a directory; {OFFLINE_HINT}")
    files = sorted((root / "宋词").glob("ci.song.*.json"), key=_file_number)
    if not files:
        raise TianciError(f"poetry source {root} has no 宋词/ci.song.<N>.json files; {OFFLINE_HINT}")
    return files + ([root / NANTANG] if (root / NANTANG).is_file() else [])


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TianciError(f"poem file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise TianciError(f"poem file {path} is not UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        where = _locate_syntax_error(text)
        if where is None:
            raise TianciError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        k, err = where
        detail = err if isinstance(err, str) else f"{err.msg} at line {err.lineno} column {err.colno}"
        raise TianciError(f"{path}: malformed JSON in poem index {k}: {detail}") from None
    if not isinstance(data, list):
        raise TianciError(f"{path}: expected a JSON array of poems, got {type(data).__name__}")
    poems = []
    for k, d in enumerate(data):
        if not isinstance(d, dict):
            raise TianciError(f"{path}: poem index {k} is a {type(d).__name__}, expected an object")
        for key in ("rhythmic", "author"):
            if not isinstance(d.get(key), str):
                raise TianciError(f"{path}: poem index {k} has no string field {key!r}")
        pars = d.get("paragraphs")
        if not isinstance(pars, list) or not all(isinstance(s, str) for s in pars):
            raise TianciError(f"{path}: poem index {k}: 'paragraphs' must be a list of strings")
        # One line per paragraph, no blank lines inside a poem (blank lines separate poems).
        lines = [ln.strip() for s in pars for ln in s.splitlines() if ln.strip()]
        if not lines:
            if skipped is not None:
                skipped.append(f"{path}: poem index {k} ({d['rhythmic']} {d['author']}): no paragraphs")
            continue
        title = d.get("title") if isinstance(d.get("title"), str) else None
        poems.append(Poem(d["rhythmic"].strip(), d["author"].strip(), lines, title))
    return poems


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tianci" / "chinese-poetry"


def download(base_url: str, dest: Path, progress: bool = True, retries: int = 3) -> Path:
    """Fetch the ci files from `base_url` (the upstream raw GitHub URL) into `dest` once."""
    from tqdm import tqdm

    for rel in tqdm(CI_FILES + [NANTANG], desc="downloading chinese-poetry", unit="file",
                    disable=not progress):
        target = dest / rel
        if target.is_file():
            continue
        url = f"{base_url.rstrip('/')}/{urllib.parse.quote(rel)}"
        for attempt in range(retries):
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    body = r.read()
                break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == retries - 1:
                    raise TianciError(f"could not download {url} ({getattr(e, 'reason', e)}); "
                                      f"{OFFLINE_HINT}") from None
                time.sleep(2 ** attempt)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(body)
        os.replace(tmp, target)  # never leave a half-written file in the cache
    return dest


def load_poems(source: str | os.PathLike | None = None, *, skipped: list[str] | None = None,
               progress: bool = False) -> list[Poem]:
    """All poems: 宋词 (ci.song.0 ... ci.song.21000) then 南唐 (45 poems).

    `source`: a local chinese-poetry directory or an http(s) base URL; default TIANCI_POETRY_SOURCE,
    else the upstream GitHub raw URL (downloaded once into ~/.cache/tianci). Poems without any
    paragraph are skipped and described in `skipped`."""
    source = str(source) if source is not None else default_source()
    if re.match(r"https?://", source):
        root = download(source, _cache_dir(), progress=progress)
    else:
        root = Path(source).expanduser()
    poems = []
    for f in poem_files(root):
        poems.extend(read_poem_file(f, skipped))
    return poems


def load_texts(paths) -> list[str]:
    """Plain UTF-8 files as a corpus: each blank-line-separated block is one document."""
    docs = []
    for p in map(Path, paths):
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TianciError(f"text file {p} does not exist") from None
        except IsADirectoryError:
            raise TianciError(f"text file {p} is a directory") from None
        except UnicodeDecodeError as e:
            raise TianciError(f"text file {p} is not UTF-8 (byte {e.start})") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")
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


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TianciError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").exists() and not force:
        raise TianciError(f"--out {out} is not empty and is not a tianci data directory (no meta.json); "
                          "choose a new directory or pass --force (only tianci's own files are written)")
    out.mkdir(parents=True, exist_ok=True)


def _write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def build(corpus: Corpus, out, *, tokenizer: str = "char", vocab_size: int = 8192, split: str = "poem",
          val_fraction: float = 0.1, seed: int = 1337, force: bool = False, progress: bool = False) -> dict:
    """Tokenize and split `corpus`, write the data directory `out`, return meta (also in meta.json)."""
    if not corpus.docs:
        raise TianciError(f"the corpus from {corpus.source} is empty: no poems/documents to train on")
    if not 0 < val_fraction < 1:
        raise TianciError(f"--val-fraction={val_fraction} is not allowed: expected 0 < f < 1")
    if split not in ("poem", "tail"):
        raise TianciError(f"--split={split!r} is not allowed: expected poem|tail")
    if tokenizer not in ("char", "bpe"):
        raise TianciError(f"--tokenizer={tokenizer!r} is not allowed: expected char|bpe")
    import numpy as np  # only here: reading a meta.json (the counting model) stays numpy-free

    out = Path(out)
    _prepare_out(out, force)
    t0 = time.time()
    chunks = [d + "\n\n" for d in corpus.docs]
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
        is_val = split_poems(len(chunks), val_fraction, seed)
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
        "source": corpus.source,
        "input": "poetry" if corpus.poems is not None else "text",
        "split": split,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    _write(out / "ci.txt", text)
    if corpus.poems is not None:
        rows = []
        for p, v in zip(corpus.poems, is_val):
            row = {"rhythmic": p.rhythmic, "author": p.author, "paragraphs": p.paragraphs}
            if p.title:
                row["title"] = p.title
            row["split"] = "val" if v else "train"
            rows.append(json.dumps(row, ensure_ascii=False))
        _write(out / "poems.jsonl", "\n".join(rows) + "\n")
    elif (out / "poems.jsonl").exists():
        (out / "poems.jsonl").unlink()  # stale, from an earlier poetry build into this directory
    le = np.dtype(dtype).newbyteorder("<")  # nanoGPT's files are little-endian on every machine
    _write(out / "train.bin", np.asarray(train_ids, dtype=le).tobytes())
    _write(out / "val.bin", np.asarray(val_ids, dtype=le).tobytes())
    tmp = out / ".tokenizer.json.tmp"
    tok.save(tmp)
    os.replace(tmp, out / "tokenizer.json")
    meta["seconds"] = round(time.time() - t0, 3)
    _write(out / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    return meta


def read_meta(data_dir) -> dict:
    """meta.json of a data directory, with a clear error when it is missing."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise TianciError(f"{data_dir} is not a prepared data directory (no meta.json): run `tianci prepare "
                          f"--out {data_dir}` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TianciError(f"{path} is not valid JSON: {e}") from None

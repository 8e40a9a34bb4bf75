"""Tokenizers: the tutorial's character table, and a byte-level BPE (Hugging Face `tokenizers`).

Both share one small interface: `kind`, `vocab_size`, `encode(text, errors="strict")`,
`decode(ids)`, `token_text(i)`, `token_bytes(i)` and `save(path)`; `load_tokenizer(path)` reads
either file back. Pure Python (the BPE imports `tokenizers` only when used), so the counting
model and `tianci prepare` never pull in torch.

Unknown characters (char tokenizer only: the vocabulary is the corpus's own characters):
  errors="strict"  raises UnknownCharError (a TianciError) naming the character and its position;
  errors="skip"    drops every unknown character and warns once (warnings.warn) with what it dropped.
There is never a silent KeyError. The byte-level BPE can encode any string, so it has no unknowns.

StreamDecoder turns ids into text one at a time for streaming output. A byte-level BPE token may
hold part of a UTF-8 character (a Chinese character is 3 bytes); the decoder buffers those bytes
and only emits whole characters.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import warnings
from pathlib import Path

from .errors import DataError, TianciError


class UnknownCharError(TianciError, ValueError):
    """The text holds a character the tokenizer's vocabulary does not have."""

    def __init__(self, char: str, position: int, count: int = 1):
        self.char, self.position = char, position
        more = f" ({count - 1} more unknown characters follow)" if count > 1 else ""
        # the remedy differs per front end (a library caller can pass errors="skip")
        super().__init__(f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
                         f"tokenizer's vocabulary{more}",
                         hints={"cli": "remove it from the text", "api": "remove it from the prompt",
                                "python": "encode(..., errors='skip') drops unknown characters"})


class UnknownTokenError(TianciError, ValueError):
    """An id outside 0..vocab_size-1 was given to decode."""


def _check_errors(errors: str) -> None:
    if errors not in ("strict", "skip"):
        raise TianciError(f"errors={errors!r} is not allowed: expected strict|skip")


class CharTokenizer:
    """The tutorial's tokenizer: one id per character, ids = positions in the sorted character set."""

    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise TianciError("char tokenizer: 'chars' must be distinct single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        _check_errors(errors)
        stoi = self.stoi
        try:  # the fast path: one dict lookup per character
            return [stoi[c] for c in text]
        except KeyError:
            pass
        bad = [(i, c) for i, c in enumerate(text) if c not in stoi]
        if errors == "strict":
            raise UnknownCharError(bad[0][1], bad[0][0], len(bad)) from None
        dropped = "".join(sorted({c for _, c in bad}))
        warnings.warn(f"dropped {len(bad)} unknown character(s) not in the vocabulary: {dropped!r}",
                      stacklevel=2)
        return [stoi[c] for c in text if c in stoi]

    def decode(self, ids) -> str:
        chars = self.chars
        if not isinstance(ids, list):  # numpy arrays, tensors, tuples, generators
            ids = [int(i) for i in ids]
        try:
            if not ids or min(ids) >= 0:  # a negative id would silently wrap around
                return "".join([chars[i] for i in ids])
        except (IndexError, TypeError):
            pass
        bad = next(i for i in ids if not isinstance(i, int) or not 0 <= i < len(chars))
        raise UnknownTokenError(f"token id {bad!r} is outside 0..{len(chars) - 1}")

    def token_text(self, i: int) -> str:
        return self.decode([i])

    def token_bytes(self, i: int) -> bytes:
        return self.token_text(i).encode("utf-8")

    def fingerprint(self) -> str:
        return _fingerprint(self.chars)

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    def save(self, path) -> None:
        from .files import atomic_write
        atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False))


def _byte_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: each byte 0..255 is shown as one printable character.

    Printable Latin-1 bytes stand for themselves; the rest are shifted to U+0100 and up, in order.
    Used to turn a byte-level token back into its raw bytes (which may be half a character)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class BPETokenizer:
    """A Hugging Face `tokenizers.Tokenizer`, stored as a standard tokenizer.json.

    `tianci prepare --tokenizer bpe` trains a byte-level BPE (no normaliser: the text round-trips
    exactly). Other HF tokenizers load too, but token_bytes/streaming assume byte-level tokens."""

    kind = "bpe"

    def __init__(self, hf):
        self.hf = hf
        self._byte_level = _is_byte_level(hf)
        self._alphabet = _byte_alphabet() if self._byte_level else None

    @classmethod
    def train(cls, texts, vocab_size: int, show_progress: bool = False) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise TianciError(f"--vocab-size={vocab_size} is too small for a byte-level BPE: expected >= 257")
        hf = Tokenizer(models.BPE())
        # GPT-2 style: split into words/punctuation/whitespace runs, then bytes. A run of Chinese
        # characters is one "word", so merges learn frequent characters and character pairs.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=show_progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        _check_errors(errors)  # byte-level: every string is encodable, nothing to skip
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UnknownTokenError(f"token id {bad[0]} is outside 0..{self.vocab_size - 1}")
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_text(self, i: int) -> str:
        """The decoded text of one token (U+FFFD where the token is only part of a character)."""
        return self.decode([i])

    def token_bytes(self, i: int) -> bytes:
        if not self._byte_level:
            return self.token_text(i).encode("utf-8")
        tok = self.hf.id_to_token(int(i))
        if tok is None:
            raise UnknownTokenError(f"token id {i} is outside 0..{self.vocab_size - 1}")
        try:
            return bytes(self._alphabet[c] for c in tok)
        except KeyError:  # an added/special token: stored as plain text
            return tok.encode("utf-8")

    def fingerprint(self) -> str:
        vocab = self.hf.get_vocab(with_added_tokens=True)
        return _fingerprint(sorted(vocab, key=vocab.__getitem__))

    def save(self, path) -> None:
        from .files import atomic_write
        atomic_write(path, self.hf.to_str(pretty=True))


def _fingerprint(tokens) -> str:
    """A hash of the vocabulary in id order: a foreign tokenizer, or the same tokens shuffled, differ."""
    h = hashlib.sha256()
    for t in tokens:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return "sha256:" + h.hexdigest()[:32]


def _is_byte_level(hf) -> bool:
    d = json.loads(hf.to_str())
    dec = d.get("decoder") or {}
    return dec.get("type") == "ByteLevel"


def load_tokenizer(path):
    """Read a tokenizer.json: tianci's char table ({"kind": "char", ...}) or a HF tokenizer.
    Every way the file can be unusable is a DataError that names it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist (run `tianci prepare` first)") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        why = "is a directory" if isinstance(e, IsADirectoryError) else "is not UTF-8"
        raise DataError(f"tokenizer file {path} {why}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"tokenizer file {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise DataError(f"tokenizer file {path} is nested too deeply to be a tokenizer") from None
    if isinstance(d, dict) and d.get("kind") == "char":
        chars = d.get("chars")
        if not isinstance(chars, list):
            raise DataError(f"tokenizer file {path}: 'chars' must be a list of characters")
        try:
            return CharTokenizer(chars)
        except TianciError as e:
            raise DataError(f"tokenizer file {path}: {e}") from None
    if isinstance(d, dict) and "model" in d:
        from tokenizers import Tokenizer
        try:
            return BPETokenizer(Tokenizer.from_str(text))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise DataError(f"tokenizer file {path} is not a valid Hugging Face tokenizer: {e}") from None
    raise DataError(f"tokenizer file {path}: neither a char tokenizer ({{\"kind\": \"char\"}}) "
                    "nor a Hugging Face tokenizer.json")


class StreamDecoder:
    """Decode ids one at a time for streaming: push(id) returns the newly completed text.

    Bytes of an unfinished UTF-8 character are held back until the character is complete, so no
    half character (and no spurious U+FFFD) is ever emitted. flush() returns what is left."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self.tok.token_bytes(int(token_id)))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)

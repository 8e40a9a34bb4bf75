"""tianci's two tokenizers in the formats other runtimes read.

- Hugging Face (`tokenizer.json`): the byte-level BPE already is one. The character table becomes a
  BPE model whose vocabulary is the characters and which has no merges: the `tokenizers` BPE
  splits text into characters and looks each up, so ids are exactly CharTokenizer's; a character
  outside the vocabulary is dropped (CharTokenizer's errors="skip"). A `Fuse` decoder joins the
  characters back without spaces.
- GGUF (llama.cpp): both become llama.cpp's "gpt2" byte-level BPE. Tokens are written in the GPT-2
  byte alphabet; for the character table, each multi-byte character gets the merges that rebuild it
  from its UTF-8 bytes (the intermediate pieces need no ids: llama.cpp looks up only the final
  symbols), so llama.cpp also tokenizes one character per token.

The corpus has no special tokens (poems end with a blank line), so none are declared.
"""

from __future__ import annotations

import json

from ..tokenizer import BPETokenizer, CharTokenizer, _byte_alphabet

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "clean_up_tokenization_spaces": False,  # the text round-trips exactly; no English-space clean-up
    "add_prefix_space": False,
    "model_max_length": None,  # filled in with block_size
}


def hf_tokenizer_json(tok) -> str:
    """tokenizer.json text for transformers / tokenizers."""
    if isinstance(tok, BPETokenizer):
        return tok.hf.to_str()
    from tokenizers import Tokenizer, decoders, models

    hf = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
    hf.decoder = decoders.Fuse()
    return hf.to_str()


def from_hf_tokenizer_json(text: str):
    """A tianci tokenizer from a tokenizer.json: the character table when it is one written by
    hf_tokenizer_json (single characters, ids in order, no merges), else the BPE as it is."""
    d = json.loads(text)
    model = d.get("model") or {}
    vocab = model.get("vocab")
    if (model.get("type") == "BPE" and not model.get("merges") and isinstance(vocab, dict)
            and (d.get("decoder") or {}).get("type") == "Fuse" and not d.get("pre_tokenizer")
            and all(len(c) == 1 for c in vocab) and sorted(vocab.values()) == list(range(len(vocab)))):
        return CharTokenizer(sorted(vocab, key=vocab.get))
    from tokenizers import Tokenizer
    return BPETokenizer(Tokenizer.from_str(text))


def _to_byte_level(s: str) -> str:
    to_char = {b: c for c, b in _byte_alphabet().items()}
    return "".join(to_char[b] for b in s.encode("utf-8"))


def gguf_vocab(tok) -> tuple[list[str], list[str]]:
    """(tokens, merges) for llama.cpp's "gpt2" tokenizer, ids in tianci's order."""
    if isinstance(tok, BPETokenizer):
        d = json.loads(tok.hf.to_str())
        vocab, merges = d["model"]["vocab"], d["model"]["merges"]
        tokens = sorted(vocab, key=vocab.get)
        if [vocab[t] for t in tokens] != list(range(len(tokens))):
            raise ValueError("BPE vocabulary ids are not 0..V-1")  # tianci's trainer always makes them so
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
        return tokens, merges
    assert isinstance(tok, CharTokenizer)
    tokens, merges = [], []
    for c in tok.chars:
        t = _to_byte_level(c)
        tokens.append(t)
        for j in range(2, len(t) + 1):  # rebuild the character byte by byte: (b1 b2), (b1b2 b3), ...
            merges.append(f"{t[:j - 1]} {t[j - 1]}")
    return tokens, list(dict.fromkeys(merges))  # characters sharing lead bytes share merges

"""Tokenizers: char table and byte-level BPE round trips, unknown characters, streaming decode."""

from __future__ import annotations

import json
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tianci.errors import TianciError
from tianci.tokenizer import (BPETokenizer, CharTokenizer, StreamDecoder, UnknownCharError,
                              UnknownTokenError, load_tokenizer)

CHARS = "春花秋月何时了往事知多少小楼昨夜又东风故国不堪回首明中，。、？！\n 词牌"


def _ci_text(n_poems: int = 300, seed: int = 0) -> str:
    rng = random.Random(seed)
    poems = []
    for _ in range(n_poems):
        lines = ["".join(rng.choices(CHARS[:24], k=rng.randint(3, 8))) + rng.choice("，。") for _ in range(4)]
        poems.append("\n".join(["浣溪沙 晏殊", *lines]))
    return "".join(p + "\n\n" for p in poems)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([_ci_text()], vocab_size=400)


def test_char_vocab_is_sorted_unique_chars_with_newline():
    """Guards: the char vocabulary drifting from the tutorial's sorted(set(text)) (ids would not match)."""
    tok = CharTokenizer.from_text("春花\n秋月\n\n春")
    assert tok.chars == sorted(set("春花\n秋月\n\n春"))
    assert "\n" in tok.chars and tok.vocab_size == 5


@given(st.text(alphabet=CHARS, max_size=200))
def test_char_round_trip(text):
    """Guards: encode/decode of the char tokenizer losing or reordering characters."""
    tok = CharTokenizer.from_text(CHARS)
    assert tok.decode(tok.encode(text)) == text
    assert "".join(tok.token_text(i) for i in tok.encode(text)) == text


def test_unknown_char_strict_names_char_and_position():
    """Guards: a silent KeyError (or a vague message) when the prompt has a character outside the vocab."""
    tok = CharTokenizer.from_text("春花秋月")
    with pytest.raises(UnknownCharError) as e:
        tok.encode("春花x秋y")
    assert isinstance(e.value, TianciError)
    assert "'x'" in str(e.value) and "position 2" in str(e.value) and "U+0078" in str(e.value)
    assert e.value.position == 2 and e.value.char == "x"


def test_unknown_char_skip_drops_and_warns():
    """Guards: errors='skip' silently changing the text without telling the user."""
    tok = CharTokenizer.from_text("春花秋月")
    with pytest.warns(UserWarning, match="x"):
        ids = tok.encode("春x花", errors="skip")
    assert tok.decode(ids) == "春花"
    with pytest.raises(TianciError, match="errors="):
        tok.encode("春", errors="ignore")


def test_decode_rejects_out_of_range_ids():
    """Guards: a negative id wrapping around to the last character, or an IndexError traceback."""
    tok = CharTokenizer.from_text("春花秋月")
    for bad in ([0, 4], [-1]):
        with pytest.raises(UnknownTokenError, match="outside 0..3"):
            tok.decode(bad)


def test_char_save_load(tmp_path):
    """Guards: the char tokenizer file not round-tripping (a run would decode with other ids)."""
    tok = CharTokenizer.from_text(CHARS)
    tok.save(tmp_path / "tokenizer.json")
    d = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert d["kind"] == "char" and d["chars"] == tok.chars
    back = load_tokenizer(tmp_path / "tokenizer.json")
    assert back.kind == "char" and back.chars == tok.chars


def test_load_tokenizer_bad_files(tmp_path):
    """Guards: a traceback instead of a clear error for a missing or foreign tokenizer file."""
    with pytest.raises(TianciError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TianciError, match="not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(TianciError, match="neither"):
        load_tokenizer(tmp_path / "other.json")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80) | st.text(alphabet=CHARS + "🌸é", max_size=80))
def test_bpe_round_trip_any_text(bpe, text):
    """Guards: the byte-level BPE not reproducing text exactly (normalisers, prefix spaces, unknowns)."""
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=CHARS + "🌸é龘", max_size=80))
def test_stream_decoder_never_emits_half_a_character(bpe, text):
    """Guards: streaming output showing U+FFFD or broken characters when a BPE token ends mid-character."""
    for tok in (bpe, CharTokenizer.from_text(CHARS + "🌸é龘")):
        sd, shown = StreamDecoder(tok), ""
        for i in tok.encode(text):
            piece = sd.push(i)
            assert "\ufffd" not in piece
            shown += piece
            assert text.startswith(shown)
        assert shown + sd.flush() == text


def test_bpe_learns_chinese_and_saves_standard_file(bpe, tmp_path):
    """Guards: a BPE that never merges Chinese bytes (no compression) or a non-standard tokenizer.json."""
    text = _ci_text(20, seed=1)
    assert len(bpe.encode(text)) < 0.4 * len(text.encode("utf-8"))  # a character is 3 bytes, 1 token
    assert len(bpe.encode("浣溪沙 晏殊\n")) <= 4  # the frequent title line became a few tokens
    bpe.save(tmp_path / "tokenizer.json")
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text).ids == bpe.encode(text)
    back = load_tokenizer(tmp_path / "tokenizer.json")
    assert back.kind == "bpe" and back.vocab_size == bpe.vocab_size
    assert back.decode(back.encode(text)) == text
    with pytest.raises(UnknownTokenError):
        back.decode([bpe.vocab_size])


def test_bpe_token_text_of_partial_character(bpe):
    """Guards: token_text crashing on a token that holds only part of a UTF-8 character."""
    partial = [i for i in range(256) if len(bpe.token_bytes(i)) == 1 and bpe.token_bytes(i)[0] >= 0x80]
    assert partial and bpe.token_text(partial[0]) == "\ufffd"
    with pytest.raises(TianciError, match="too small"):
        BPETokenizer.train(["春"], vocab_size=100)

"""Tones and 词林正韵 rhyme groups (tianci.ci.tones)."""

from __future__ import annotations

import pytest

from tianci.errors import TianciError
from tianci.ci.tones import PING, ZE, ZHONG, Phonology, is_han

CILIN = {"第一部": {"平声": ["东", "中", "风"], "仄声": ["动", "中"]},
         "第十七部": {"入声": ["国", "月"]}}


def test_tables_decide_tone_and_group():
    """Guards: 入声 counted as 平 (Mandarin guó) and polyphones losing a reading."""
    ph = Phonology.from_tables(CILIN, {"看": "多"}, use_pypinyin=False)
    assert ph.tones("国") == {ZE}  # entering tone → 仄, although Mandarin reads it level
    assert ph.fits("中", PING) and ph.fits("中", ZE)  # polyphone: any reading fits
    assert ph.groups("中", PING) == {1} and ph.groups("国") == {17}
    assert ph.fits("看", PING) and ph.fits("看", ZE) and ph.groups("看") == set()  # tone-only table


def test_unknown_char_fits_only_zhong():
    """Guards: an unknown character being accepted at a strict 平/仄 slot."""
    ph = Phonology.from_tables(CILIN, {}, use_pypinyin=False)
    assert ph.fits("龘", ZHONG) and not ph.fits("龘", PING) and not ph.fits("龘", ZE)


def test_pypinyin_fallback_modern_tones():
    """Guards: the fallback mapping (1,2 → 平; 3,4 → 仄) for characters the tables lack."""
    pytest.importorskip("pypinyin")
    ph = Phonology.from_tables({}, {}, use_pypinyin=True)
    assert ph.tones("妈") == {PING} and ph.tones("马") == {ZE}
    assert ph.groups("妈") == set()  # no rhyme group from pypinyin


def test_is_han():
    """Guards: punctuation or ASCII treated as a character slot filler."""
    assert is_han("春") and is_han("䌽") and not is_han("，") and not is_han("a") and not is_han("□")


def test_missing_source_is_clear(tmp_path):
    """Guards: a raw FileNotFoundError instead of a TianciError naming the file and the env var."""
    with pytest.raises(TianciError, match="Cilin_Rhyme.json.*TIANCI_RHYME_SOURCE"):
        Phonology.load(tmp_path)


def test_real_tables(rhyme_dir):
    """Guards: mis-parsing the real chinese_word_rhyme files."""
    ph = Phonology.load(rhyme_dir)
    assert ph.groups("东", PING) == {1} and ph.fits("月", ZE) and ph.tones("看") == {PING, ZE}
    assert len(ph.readings) > 8000

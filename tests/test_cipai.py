"""词谱 patterns, corpus skeletons and name resolution (tianci.ci.cipai, tianci.ci.corpus_stats)."""

from __future__ import annotations

import json

import pytest

from tianci.ci.cipai import CiPu, UnknownCipaiError, render
from tianci.ci.corpus_stats import CorpusPoem, CorpusStats, skeleton_line
from tianci.errors import TianciError

HXS = {"ge_lyu_str": "中仄中平中仄平中平中仄仄平平", "rhyme_pos": [6, 13], "yun_classify": {"0": [6, 13]},
       "ci_sep": ["宿醉离愁慢髻鬟", "六铢衣薄惹轻寒"], "origin": "宿醉离愁慢髻鬟。六铢衣薄惹轻寒。"}
HXS2 = {"ge_lyu_str": "平仄仄平平仄仄仄平平仄仄平平", "rhyme_pos": [13], "yun_classify": {"0": [13]},
        "ci_sep": ["红蓼渡头秋正雨　印沙鸥迹自成行"], "origin": "红蓼渡头秋正雨，印沙鸥迹自成行。"}
PSM = {"ge_lyu_str": "平仄平平仄平平仄", "rhyme_pos": [2, 7], "yun_classify": {"-1": [2], "0": [-7]},
       "ci_sep": ["春风起", "明月照江楼"], "origin": "春风起。明月、照江楼。"}


def write_cipu(root, tunes):
    """A 词谱 directory in couyun's layout: tunes = [(names, pinyins, full, [variants...]), ...]."""
    idx = [{"idx": i, "names": names, "pinyins": pys, "full": full} for i, (names, pys, full, _) in enumerate(tunes)]
    (root / "ci_list").mkdir()
    (root / "ci_index.json").write_text(json.dumps(idx, ensure_ascii=False), encoding="utf-8")
    for i, (*_, variants) in enumerate(tunes):
        (root / "ci_list" / f"cipai_{i}.json").write_text(json.dumps(variants, ensure_ascii=False), "utf-8")
    return root


@pytest.fixture
def mini_cipu(tmp_path):
    return write_cipu(tmp_path, [(["浣溪沙"], ["hxs", "huanxisha"], "huanxisha", [HXS, HXS2]),
                                 (["菩萨蛮", "重叠金"], ["psm"], "pusaman", [PSM])])


def test_parse_variant(mini_cipu):
    """Guards: line breaks, pause marks and rhyme groups taken from the wrong fields."""
    f = CiPu.load(mini_cipu).form("浣溪沙")
    assert f.lines == ("*******。", "*******。") and f.source == "词谱" and f.variant == 0
    assert [i for i, r in enumerate(f.rhyme) if r >= 0] == [6, 13]
    p = CiPu.load(mini_cipu).form("重叠金")  # alias
    assert p.lines == ("***。", "**、***。")  # 读 keeps its 、
    assert p.rhyme[2] == 0 and p.rhyme[7] == 1  # rhyme change; a negative (叶) position keeps its group
    assert render(p).splitlines()[0] == "○●○A。"


def test_variant_follows_corpus(mini_cipu):
    """Guards: choosing the 词谱's first variant when the corpus writes another one."""
    poems = [CorpusPoem("浣溪沙", "某", ["红蓼渡头秋正雨，印沙鸥迹自成行。"]) for _ in range(3)]
    f = CiPu.load(mini_cipu, CorpusStats.from_poems(poems)).form("浣溪沙")
    assert f.variant == 1 and f.lines == ("*******，*******。",) and f.corpus_count == 3
    with pytest.raises(TianciError, match=r"variant=5 is not allowed: expected 0..1"):
        CiPu.load(mini_cipu).form("浣溪沙", 5)


def test_forms_count_the_corpus_once_per_cipai(mini_cipu, monkeypatch):
    """Guards CiPu.forms counting the corpus's skeletons again on every call: a server asks for a
    词牌's forms on every compose request, next to the engine's thread."""
    poems = [CorpusPoem("浣溪沙", "某", ["红蓼渡头秋正雨，印沙鸥迹自成行。"]) for _ in range(3)]
    cp = CiPu.load(mini_cipu, CorpusStats.from_poems(poems))
    first = cp.forms("浣溪沙")
    counted = []
    monkeypatch.setattr(cp.corpus, "skeletons", lambda titles: counted.append(titles))
    again = cp.forms("浣溪沙")
    again.pop()  # the caller's list: not the kept one
    assert cp.forms("浣溪沙") == first and len(first) == 2 and not counted


def test_corpus_only_form(mini_cipu):
    """Guards: a 词牌 missing from the 词谱 having no form at all."""
    poems = [CorpusPoem("一翦梅", "某", ["红叶飘零。", "秋风送客东。"]) for _ in range(4)]
    cp = CiPu.load(mini_cipu, CorpusStats.from_poems(poems))
    f = cp.form("一翦梅")
    assert f.source == "corpus" and f.lines == ("****。", "*****。") and set(f.tones) == {"中"}
    row = next(r for r in cp.listing() if r.name == "一翦梅")
    assert (row.aliases, row.source, row.count, row.pinyin) == ((), "corpus", 4, ())


def test_variant_characters_and_aliases_join_the_cipu(tmp_path):
    """Guards corpus titles that spell a 词谱 tune differently (一翦梅 for 一剪梅, 思佳客 for 鹧鸪天)
    becoming separate corpus-only 词牌 with guessed forms, their poems lost to the real tune."""
    write_cipu(tmp_path, [(["一剪梅"], ["yjm"], "yijianmei", [HXS]), (["鹧鸪天"], ["zgt"], "zhegutian", [HXS2])])
    poems = ([CorpusPoem("一翦梅", "某", ["宿醉离愁慢髻鬟。", "六铢衣薄惹轻寒。"])] * 3
             + [CorpusPoem("思佳客", "某", ["红蓼渡头秋正雨，印沙鸥迹自成行。"])] * 2)
    cp = CiPu.load(tmp_path, CorpusStats.from_poems(poems))
    f = cp.form("一翦梅")
    assert f.name == "一剪梅" and f.source == "词谱" and f.corpus_count == 3 and f.title == "一翦梅"
    g = cp.form("思佳客")
    assert g.name == "鹧鸪天" and g.source == "词谱" and g.corpus_count == 2
    assert not [row for row in cp.listing() if row.source == "corpus"]


def test_tune_written_in_its_ling_form_uses_that_pattern(tmp_path):
    """Guards composing 浪淘沙 as the 词谱's 28-character quatrain when the corpus (李煜's 帘外雨潺潺
    and 170 more) writes it in 浪淘沙令's form: the 令 entry supplies the pattern, the title stays."""
    write_cipu(tmp_path, [(["浪淘沙"], ["lts"], "langtaosha", [PSM]),
                          (["浪淘沙令"], ["ltsl"], "langtaoshaling", [HXS])])
    poems = [CorpusPoem("浪淘沙", "某", ["宿醉离愁慢髻鬟。", "六铢衣薄惹轻寒。"])] * 6
    cp = CiPu.load(tmp_path, CorpusStats.from_poems(poems))
    f = cp.form("浪淘沙")
    assert (f.name, f.title, f.n_chars, f.corpus_count) == ("浪淘沙令", "浪淘沙", 14, 6)
    assert cp.form("浪淘沙", 0).n_chars == 8  # an explicit --variant still means the 词谱's own 浪淘沙
    few = CiPu.load(tmp_path, CorpusStats.from_poems(poems[:3]))
    assert few.form("浪淘沙").name == "浪淘沙"  # too few poems to overrule the 词谱


def test_unknown_name_suggests(mini_cipu):
    """Guards: an unknown 词牌 failing without naming the closest ones."""
    cp = CiPu.load(mini_cipu)
    with pytest.raises(UnknownCipaiError) as e:
        cp.resolve("浣溪纱")
    assert "浣溪沙" in e.value.suggestions and "浣溪沙" in str(e.value)
    assert cp.resolve("huanxisha").names[0] == "浣溪沙" and cp.resolve("psm").names[0] == "菩萨蛮"


def test_skeleton_line():
    """Guards: corpus paragraphs with odd marks producing bogus skeletons."""
    assert skeleton_line("春江潮水，连海平。") == "****，***。"
    assert skeleton_line("春江；连海？") == "**，**。"
    assert skeleton_line("春（江）。") is None and skeleton_line("春江") is None


def test_missing_source(tmp_path):
    """Guards: a traceback instead of a clear error when the 词谱 is absent."""
    with pytest.raises(TianciError, match="ci_index.json.*TIANCI_CIPU_SOURCE"):
        CiPu.load(tmp_path)


def test_real_cipu(cipu_dir):
    """Guards: mis-parsing the real 817 patterns (line breaks, 叶, rhyme changes)."""
    cp = CiPu.load(cipu_dir)
    assert sum(e.idx is not None for e in cp.entries) == 817
    f = cp.form("浣溪沙")
    assert f.n_chars == 42 and len(f.lines) == 5 and max(f.rhyme) == 0
    assert f.lines[3] == "*******，*******。"
    assert max(cp.form("菩萨蛮").rhyme) == 3  # four rhymes
    assert cp.form("念奴娇").n_chars == 100 and cp.resolve("酹江月").names[0] == "念奴娇"
    broken = 0
    for e in cp.entries:
        vs = cp.variants(e)
        broken += sum(v is None for v in vs)
        for v in vs:
            if v is not None:
                assert sum(s.count("*") for s in v.lines) == len(v.tones)
                assert all(s.endswith("。") for s in v.lines)
    assert broken <= 2

"""Themes (issue 12 item 4): theme words drawn from each poem into its title line at `prepare
--themes` (tianci.themes), and `compose --theme` conditioning on them (tianci.ci.compose)."""

from __future__ import annotations

import json
import random
from pathlib import Path


from tianci.ci.compose import compose
from tianci.cli import main
from tianci.header import Header
from tianci.themes import ThemeWords, draw_themes
from tianci.tokenizer import CharTokenizer

from test_classical import _val_text
from test_compose import FORM, PHON, TinyLM, tok_of, ALL_HAN

WORDS = ["春雨", "归舟", "明月", "西风", "斜阳", "芳草"]


def write_ci(root: Path, n: int = 60) -> Path:
    """n ci whose lines are made of WORDS (each in well over 20 poems) and filler characters."""
    rng = random.Random(0)
    poems = []
    for i in range(n):
        a, b = rng.sample(WORDS, 2)
        poems.append({"rhythmic": "浣溪沙", "author": f"作者{i % 7}",
                      "paragraphs": [f"{a}{'山水云烟'[i % 4]}花落，{b}{'天地江湖'[i % 4]}人归。"]})
    p = root / "宋词" / "ci.song.0.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(poems, ensure_ascii=False), "utf-8")
    return root


def test_theme_words_are_whole_phrases_of_the_poem():
    """Guards theme words that a user would never ask for: a pair with a function character (不知),
    a fragment cut out of a longer word (念故 of 念故人), a pair too rare to be a word, or a word
    the poem does not hold."""
    texts = [f"{'念忆送寄念'[i % 5]}故人，{'山江云'[i % 3]}春雨{'来去落'[i % 3]}不知。{'孤冷残'[i % 3]}明月"
             f"{'照寒'[i % 2]}。" for i in range(60)] + ["远山。"] * 3
    tw = ThemeWords.from_texts(texts)
    assert "春雨" in tw.poems_with and "明月" in tw.poems_with
    assert "故人" in tw.poems_with and "念故" not in tw.poems_with  # 念故 is always followed by 人
    assert "不知" not in tw.poems_with and "远山" not in tw.poems_with
    picked = {w for k in range(20) for w in tw.pick("念故人，江春雨来不知。", random.Random(k))}
    assert picked and picked <= {"故人", "春雨"}


def test_prepare_themes_in_train_headers_only_and_val_unchanged(tmp_path, capsys):
    """Guards: theme words in val headers (val loss would fall because the header gives the poem
    away, no longer comparable with a corpus prepared without themes), a theme the poem does not
    contain, a different val split with themes, and themes not recorded in poems.jsonl."""
    root = write_ci(tmp_path / "poetry")
    for out, extra in (("plain", []), ("themed", ["--themes", "1"])):
        assert main(["prepare", "--quiet", "--source", str(root), "--out", str(tmp_path / out), *extra]) == 0
    capsys.readouterr()
    assert _val_text(tmp_path / "plain") == _val_text(tmp_path / "themed")
    rows = [json.loads(x) for x in (tmp_path / "themed" / "poems.jsonl").read_text("utf-8").splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert all("theme" not in r for r in rows if r["split"] == "val")
    assert all(r.get("theme") for r in train)  # fraction 1: every train poem that has theme words
    text = (tmp_path / "themed" / "ci.txt").read_text("utf-8")
    for r in train:
        body = "\n".join(r["paragraphs"])
        assert all(w in body for w in r["theme"])
        assert Header("浣溪沙", r["author"], theme=tuple(r["theme"])).text() + "\n" + body in text
    meta = json.loads((tmp_path / "themed" / "meta.json").read_text())
    assert meta["themes"] == 1 and meta["n_themed"] == len(train)
    assert draw_themes(["春雨"] * 4, [True] * 4, 1.0, 0) == [()] * 4


class Recorder(TinyLM):
    """TinyLM that keeps the first input it was given (the prompt)."""

    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.prompts: list[list[int]] = []

    def forward(self, idx, targets=None, kv_cache=None):
        self.prompts.append(idx[0].tolist())
        return super().forward(idx, targets, kv_cache)


def test_compose_writes_the_theme_into_the_title_line_of_a_themed_run():
    """Guards `--theme` not reaching the model of a run trained with theme words (only the bonus,
    the title line plain), and a run never trained on them being fed marks it has never seen."""
    themed = CharTokenizer(sorted(set(tok_of(ALL_HAN).chars) | set("〈〉")))
    for tok, want in ((themed, f"\n\n{FORM.title}〈春花 秋〉 某\n"), (tok_of(ALL_HAN), f"\n\n{FORM.title} 某\n")):
        m = Recorder(tok.vocab_size)
        r = compose(m, tok, FORM, phon=PHON, seed=0, author="某", theme="春花,秋")
        assert tok.decode(m.prompts[0]) == "".join(c for c in want if c in tok.stoi)
        assert r.theme == ("春花", "秋") and r.theme_found == [w for w in r.theme if w in r.text]
        assert r.prompt_tokens == len(m.prompts[0])

"""More to learn from (issue 12 item 5): `prepare --corpus classical` (tianci.classical), the one
title-line format (tianci.header), and `train --init-from` (tianci.finetune). Small poetry trees
are written here; the upstream path is served by a local http.server (no internet)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tianci import classical as CL
from tianci import corpus as C
from tianci.cli import main
from tianci.corpus import DataDir
from tianci.errors import DataError, ParameterError
from tianci.header import Header, check_theme

from test_sources import Server, home  # noqa: F401  (home: a fresh config + cache, no TIANCI_* variables)
from test_train import tiny_flags

CI = [{"rhythmic": "浣溪沙", "author": "晏殊", "paragraphs": ["一曲新词酒一杯，去年天气旧亭台。", "夕阳西下几时回。"]},
      {"rhythmic": "浣溪沙", "author": "苏轼", "paragraphs": ["山下兰芽短浸溪，松间沙路净无泥。", "萧萧暮雨子规啼。"]},
      {"rhythmic": "如梦令", "author": "李清照", "paragraphs": ["昨夜雨疏风骤，浓睡不消残酒。"]},
      {"rhythmic": "点绛唇", "author": "李清照", "paragraphs": ["蹴罢秋千，起来慵整纤纤手。"]},
      {"rhythmic": "长相思", "author": "白居易", "paragraphs": ["汴水流，泗水流，流到瓜洲古渡头。"]},
      {"rhythmic": "忆江南", "author": "白居易", "paragraphs": ["江南好，风景旧曾谙。"]}]
TANG = [{"author": "太宗皇帝", "title": "帝京篇十首 一", "paragraphs": ["秦川雄帝宅，函谷壯皇居。", "綺殿千尋起，離宮百雉餘。"]},
        {"author": "王績", "title": "句", "paragraphs": ["側望卿相門。", "轉錄自《〈全唐詩〉小補》。"]},
        {"author": "李白", "title": "靜夜思", "paragraphs": ["床前明月光，疑是地上霜。"]},
        {"author": "無名", "title": "空", "paragraphs": []}]
SONG = [{"author": "蘇軾", "title": "題西林壁", "paragraphs": ["橫看成嶺側成峰，遠近高低各不同。"]}]
QU = [{"dynasty": "yuan", "author": "马致远", "title": "越调・天净沙・秋思", "paragraphs": ["枯藤老树昏鸦，小桥流水人家。"]}]
SHIJING = [{"title": "关雎", "chapter": "国风", "section": "周南", "content": ["关关雎鸠，在河之洲。"]}]
CHUCI = [{"title": "离骚", "section": "离骚", "author": "屈原", "content": ["帝高阳之苗裔兮，朕皇考曰伯庸。"]}]


def write_poetry(root: Path, *, song: bool, ci_everywhere: bool = False) -> Path:
    """A chinese-poetry tree with every file of each part (empty arrays after the first), as upstream."""
    def put(rel: str, data) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, ensure_ascii=False), "utf-8")

    for rel in C.CI_FILES + [C.NANTANG] if ci_everywhere else ["宋词/ci.song.0.json"]:
        put(rel, CI if rel.endswith("ci.song.0.json") else [])
    parts = {p.name: p for p in CL.PARTS}
    for name, data in (("全唐诗", TANG), ("元曲", QU), ("诗经", SHIJING), ("楚辞", CHUCI)) + (
            (("全宋诗", SONG),) if song else ()):
        for k, rel in enumerate(parts[name].files):
            put(rel, data if k == 0 else [])
    return root


def test_header_round_trips_every_genre_and_theme():
    """Guards: a title line the reader splits wrong — a Tang title with a space read as part of the
    author, a theme read into the title, a genre tag lost — and ci's line changed from the tutorial's."""
    cases = [Header("浣溪沙", "晏殊"), Header("浣溪沙", "晏殊", theme=("春雨", "归舟")),
             Header("帝京篇十首 一", "太宗皇帝", "shi"), Header("关雎", "佚名", "shijing", ("雎鸠",)),
             Header("越调・天净沙・秋思", "马致远", "qu")]
    for h in cases:
        assert Header.parse(h.text()) == h
    assert Header("浣溪沙", "晏殊").text() == "浣溪沙 晏殊"  # ci-only corpora stay byte-for-byte the tutorial's
    assert Header("浣溪沙", theme=("春雨",)).prompt() == "浣溪沙〈春雨〉 "
    assert Header("静夜思", "李白", "shi").text() == "【诗】静夜思 李白"
    assert check_theme("春雨，归舟") == check_theme("春雨 归舟") == ("春雨", "归舟")
    for bad in ("a,b,c,d", "春〉雨", ""):
        with pytest.raises(ParameterError):
            check_theme(bad)


def test_classical_reads_each_layout_and_converts_traditional(tmp_path):
    """Guards: 全唐诗 left in traditional characters (a second vocabulary for the same words), 诗经's
    and 楚辞's `content` layout not read, a 诗经 poem with no author giving a title line that reads
    back wrong, an empty poem kept, a header mark inside a poem kept (a pretrained run would look
    trained on themes), and a local copy without 全宋诗 failing instead of reporting it."""
    root = write_poetry(tmp_path / "poetry", song=False)
    skipped: list[str] = []
    cl = CL.load_classical(root, skipped=skipped)
    assert cl.missing == ["全宋诗"]
    assert cl.counts == {"宋词": 6, "全唐诗": 3, "元曲": 1, "诗经": 1, "楚辞": 1}
    by_title = {p.title: p for p in cl.poems if p.genre != "ci"}
    assert by_title["帝京篇十首 一"].paragraphs == ["秦川雄帝宅，函谷壮皇居。", "绮殿千寻起，离宫百雉余。"]
    assert by_title["静夜思"].genre == "shi" and by_title["离骚"].author == "屈原"
    assert by_title["关雎"].author == "佚名" and by_title["关雎"].genre == "shijing"
    assert Header.parse(by_title["帝京篇十首 一"].text().split("\n")[0]) == Header("帝京篇十首 一", "太宗皇帝", "shi")
    assert any("no paragraphs" in s for s in skipped)
    assert by_title["句"].paragraphs[1] == "转录自《全唐诗小补》。"  # no theme mark from an editor's note
    (root / CL.PARTS[0].files[7]).unlink()  # a broken copy: 全唐诗 without one of its files
    with pytest.raises(DataError, match="57 of the 58 files of 全唐诗"):
        CL.load_classical(root)


def test_classical_from_upstream_includes_the_song_shi_and_caches_it(tmp_path, home):  # noqa: F811
    """Guards: 全宋诗 (upstream only) not loaded by the same code from the URL, or downloaded again by
    a second prepare: a fake upstream on 127.0.0.1 serves a slice with every file of every part."""
    server = Server(write_poetry(tmp_path / "upstream", song=True, ci_everywhere=True))
    try:
        cl = CL.load_classical(server.url)
        assert cl.missing == [] and cl.counts["全宋诗"] == 1
        song = next(p for p in cl.poems if p.title == "题西林壁")
        assert song.paragraphs == ["横看成岭侧成峰，远近高低各不同。"] and song.author == "苏轼"
        n = len(server.paths)
        assert n == len(C.CI_FILES) + 1 + sum(len(p.files) for p in CL.PARTS)
        CL.load_classical(server.url)
        assert len(server.paths) == n  # every file came from the cache
    finally:
        server.stop()


def _prepare(args: list[str], capsys) -> dict:
    assert main(["prepare", "--quiet", *args]) == 0
    capsys.readouterr()
    return json.loads((Path(args[args.index("--out") + 1]) / "meta.json").read_text("utf-8"))


def _val_text(d: Path) -> str:
    data = DataDir(d)
    return data.tokenizer().decode(np.fromfile(d / "val.bin", dtype=data.meta()["dtype"]).tolist())


def test_classical_val_split_is_the_ci_only_corpus_val(tmp_path, capsys):
    """Guards: classical verse in val (its loss would not compare with a ci-only run's) or a
    different set of ci poems in val: the val text of `--corpus classical` must equal a ci-only
    corpus's, while train holds every genre with its tag and poems.jsonl serves only ci to 填词."""
    from tianci.ci.corpus_stats import load_corpus

    root = write_poetry(tmp_path / "poetry", song=False)
    ci = _prepare(["--source", str(root), "--out", str(tmp_path / "ci"), "--val-fraction", "0.34"], capsys)
    cl = _prepare(["--source", str(root), "--corpus", "classical", "--out", str(tmp_path / "cl"),
                   "--val-fraction", "0.34"], capsys)
    assert _val_text(tmp_path / "ci") == _val_text(tmp_path / "cl") and ci["n_val"] == cl["n_val"] == 2
    assert cl["genres"] == {"ci": 6, "shi": 3, "qu": 1, "shijing": 1, "chuci": 1} and cl["corpus"] == "classical"
    text = (tmp_path / "cl" / "ci.txt").read_text("utf-8")
    assert "【诗】帝京篇十首 一 太宗皇帝\n秦川雄帝宅" in text and "【诗经】关雎 佚名\n" in text
    assert cl["vocab_size"] > ci["vocab_size"]  # the pretraining vocabulary is a superset
    assert {p.title for p in load_corpus(tmp_path / "cl").poems} == {p["rhythmic"] for p in CI}
    assert main(["prepare", "--quiet", "--source", str(root), "--corpus", "classical", "--split", "tail",
                 "--out", str(tmp_path / "tail")]) == 2
    assert "--split tail" in capsys.readouterr().err


def test_init_from_maps_the_vocabulary_by_character_and_records_the_source(tmp_path, capsys):
    """Guards: fine-tuning that silently starts from scratch, or from rows of the wrong characters
    when the pretraining vocabulary (all corpora) is larger than the ci one; the source run not
    recorded; the source run written to; a tokenizer that cannot be mapped giving a shape error
    instead of a typed one naming both vocabulary sizes."""
    from tianci.checkpoint import load_run, read_config
    from tianci.finetune import VocabMismatch, init_weights
    from tianci.model import GPT

    root = write_poetry(tmp_path / "poetry", song=False)
    _prepare(["--source", str(root), "--corpus", "classical", "--out", str(tmp_path / "cl")], capsys)
    _prepare(["--source", str(root), "--out", str(tmp_path / "ci")], capsys)
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    assert main(["train", *tiny_flags(tmp_path / "cl", "--block-size", "8"), "--out", str(pre),
                 "--max-iters", "2"]) == 0
    before = (pre / "best.safetensors").read_bytes()
    assert main(["train", "--init-from", str(pre), "--data", str(tmp_path / "ci"), "--out", str(ft),
                 "--max-iters", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert (pre / "best.safetensors").read_bytes() == before
    rec = read_config(ft)["init_from"]
    src, ci_tok = load_run(pre), DataDir(tmp_path / "ci").tokenizer()
    assert rec["run"] == str(pre.resolve()) and rec["how"] == "by character"
    assert rec["vocab_target"] == ci_tok.vocab_size == rec["carried"] < rec["vocab_source"]
    # the rows the fine-tune starts from are the pretrained rows of the same characters
    model = GPT(load_run(ft).preset.model)
    init_weights(model, pre, ci_tok)
    stoi = {src.tokenizer.token_text(i): i for i in range(src.tokenizer.vocab_size)}
    for i in range(ci_tok.vocab_size):
        assert torch.equal(model.wte.weight[i], src.model.wte.weight[stoi[ci_tok.token_text(i)]])
    # model flags cannot change; the same run cannot be its own source
    assert main(["train", "--init-from", str(pre), "--data", str(tmp_path / "ci"), "--out", str(tmp_path / "x"),
                 "--n-layer", "3"]) == 2
    assert "--n-layer" in capsys.readouterr().err
    # a BPE data set cannot take a char run's rows: a typed error with both sizes
    _prepare(["--source", str(root), "--out", str(tmp_path / "bpe"), "--tokenizer", "bpe", "--vocab-size", "300"],
             capsys)
    bpe_tok = DataDir(tmp_path / "bpe").tokenizer()
    with pytest.raises(VocabMismatch, match=rf"{src.tokenizer.vocab_size} char tokens.*{bpe_tok.vocab_size} bpe"):
        init_weights(GPT(load_run(ft).preset.model), pre, bpe_tok)


def test_init_from_maps_value_embeddings_by_character(tmp_path, capsys):
    """Guards `--init-from` with value_embeds (issue 16): the value embeddings are vocabulary-shaped
    like wte, so a by-character fine-tune must map their rows too (not refuse the shape, nor copy
    the pretraining vocabulary's rows onto the wrong characters)."""
    from tianci.checkpoint import load_run
    from tianci.finetune import init_weights
    from tianci.model import GPT

    root = write_poetry(tmp_path / "poetry", song=False)
    _prepare(["--source", str(root), "--corpus", "classical", "--out", str(tmp_path / "cl")], capsys)
    _prepare(["--source", str(root), "--out", str(tmp_path / "ci")], capsys)
    pre = tmp_path / "pre"
    assert main(["train", *tiny_flags(tmp_path / "cl", "--block-size", "8", "--n-layer", "1", "--value-embeds"),
                 "--out", str(pre), "--max-iters", "2"]) == 0
    capsys.readouterr()
    src, ci_tok = load_run(pre), DataDir(tmp_path / "ci").tokenizer()
    cfg = src.preset.model
    cfg.vocab_size = ci_tok.vocab_size
    model = GPT(cfg)
    rec = init_weights(model, pre, ci_tok)
    assert rec.how == "by character" and model.value_embeds["0"].weight.shape[0] == ci_tok.vocab_size
    stoi = {src.tokenizer.token_text(i): i for i in range(src.tokenizer.vocab_size)}
    table, src_table = model.value_embeds["0"].weight, src.model.value_embeds["0"].weight
    assert src_table.abs().sum() > 0  # trained off its zero init, so a wrong row would show
    for i in range(ci_tok.vocab_size):
        assert torch.equal(table[i], src_table[stoi[ci_tok.token_text(i)]])

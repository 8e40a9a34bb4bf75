"""The corpus builder (`tianci prepare`): reading chinese-poetry, ci.txt, nanoGPT bins, splits, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from tianci import corpus as C
from tianci.errors import TianciError
from tianci.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def poem(i: int, n_lines: int = 2, **extra) -> dict:
    lines = [f"春花秋月{i}何时了，", f"往事知多少{i}。"][:n_lines]
    lines += ["小楼昨夜又东风。"] * max(0, n_lines - 2)
    return {"rhythmic": f"词牌{i % 3}", "author": f"作者{i}", "paragraphs": lines, **extra}


def make_tree(root: Path, per_file: int = 4, numbers=(0, 1000, 2000, 10000), nantang: int = 2) -> Path:
    """A tiny chinese-poetry checkout; poem ids count up in numeric file order (10000 after 2000)."""
    k = 0
    (root / "宋词").mkdir(parents=True)
    for n in numbers:
        poems = [poem(k + j) for j in range(per_file)]
        k += per_file
        (root / "宋词" / f"ci.song.{n}.json").write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    if nantang:
        d = root / "五代诗词" / "nantang"
        d.mkdir(parents=True)
        poems = [poem(k + j, title=f"题{j}", notes=["注"]) for j in range(nantang)]
        (d / "poetrys.json").write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "poetry")


def build_tree(src: Path, out: Path, **kw) -> dict:
    skipped: list[str] = []
    poems = C.load_poems(src, skipped=skipped)
    return C.build(C.Corpus([p.text() for p in poems], str(src), poems, skipped), out, **kw)


def read_bin(path: Path, meta: dict) -> list[int]:
    return np.fromfile(path, dtype=np.dtype(meta["dtype"])).tolist()


def test_load_poems_numeric_order_and_nantang_last(tree):
    """Guards: files read in string order (10000 before 2000) or the 南唐 poems missing."""
    poems = C.load_poems(tree)
    assert [p.author for p in poems] == [f"作者{i}" for i in range(18)]
    assert poems[-1].title == "题1" and poems[0].title is None
    assert poems[0].text() == "词牌0 作者0\n春花秋月0何时了，\n往事知多少0。"


def test_bins_are_nanogpt_readable_and_match_ci_txt(tree, tmp_path):
    """Guards: bins that numpy (nanoGPT's np.memmap/fromfile uint16) cannot decode back to the corpus text."""
    meta = build_tree(tree, tmp_path / "out", split="tail")
    out = tmp_path / "out"
    text = (out / "ci.txt").read_text(encoding="utf-8")
    assert text.startswith("词牌0 作者0\n春花秋月0何时了，\n往事知多少0。\n\n词牌1 作者1\n")
    assert text.endswith("。\n\n") and text.count("\n\n") == 18
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.chars == sorted(set(text))  # the vocabulary is the whole corpus's, as the tutorial
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    train, val = read_bin(out / "train.bin", meta), read_bin(out / "val.bin", meta)
    assert tok.decode(train) + tok.decode(val) == text
    assert (out / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    assert meta["train_chars"] + meta["val_chars"] == len(text) and meta["n_poems"] == 18


def test_tail_split_is_the_tutorials_last_tenth(tree, tmp_path):
    """Guards: --split tail not matching the tutorial's n = int(0.9 * len(data)) cut."""
    meta = build_tree(tree, tmp_path / "out", split="tail", val_fraction=0.1)
    text = (tmp_path / "out" / "ci.txt").read_text(encoding="utf-8")
    assert meta["train_tokens"] == int(0.9 * len(text)) and meta["split"] == "tail"
    rows = [json.loads(x) for x in (tmp_path / "out" / "poems.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["split"] for r in rows] == sorted(r["split"] for r in rows)  # train first, then val


def test_poem_split_keeps_poems_whole(tree, tmp_path):
    """Guards: a poem straddling train and val (val loss measured on text the model has seen)."""
    meta = build_tree(tree, tmp_path / "out", split="poem", val_fraction=0.25, seed=3)
    out = tmp_path / "out"
    tok = load_tokenizer(out / "tokenizer.json")
    chunks = lambda name: tok.decode(read_bin(out / name, meta)).split("\n\n")[:-1]  # noqa: E731
    train, val = chunks("train.bin"), chunks("val.bin")
    assert not set(train) & set(val)
    allp = [p.text() for p in C.load_poems(tree)]
    assert sorted(train + val) == sorted(allp)
    assert len(val) == meta["n_val"] == round(18 * 0.25) and meta["n_train"] == 18 - len(val)
    rows = [json.loads(x) for x in (out / "poems.jsonl").read_text(encoding="utf-8").splitlines()]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert {C.Poem(r["rhythmic"], r["author"], r["paragraphs"]).text() for r in val_rows} == set(val)
    assert rows[-1]["title"] == "题1" and "notes" not in rows[-1]
    assert train == [p for p in allp if p in set(train)]  # corpus order is kept inside each split


def test_poem_split_is_seeded(tree, tmp_path):
    """Guards: a split that changes between runs (val numbers not comparable) or ignores --seed."""
    a = build_tree(tree, tmp_path / "a", seed=1)
    b = build_tree(tree, tmp_path / "b", seed=1)
    c = build_tree(tree, tmp_path / "c", seed=2)
    read = lambda d: (d / "val.bin").read_bytes()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b") and a["seed"] == 1
    assert read(tmp_path / "a") != read(tmp_path / "c") or c["val_tokens"] != a["val_tokens"]


def test_bpe_build(tree, tmp_path):
    """Guards: BPE bins that do not decode to the corpus, or char counts missing for bits/char."""
    meta = build_tree(tree, tmp_path / "out", tokenizer="bpe", vocab_size=300, split="tail")
    out = tmp_path / "out"
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.kind == "bpe" and meta["tokenizer"] == "bpe" and meta["vocab_size"] == tok.vocab_size <= 300
    text = (out / "ci.txt").read_text(encoding="utf-8")
    assert tok.decode(read_bin(out / "train.bin", meta)) + tok.decode(read_bin(out / "val.bin", meta)) == text
    assert meta["train_tokens"] < meta["train_chars"]


def test_text_corpus_splits_documents_on_blank_lines(tmp_path):
    """Guards: --text treating a whole file as one document (a per-document split would be impossible)."""
    f = tmp_path / "a.txt"
    f.write_text("第一段\n第二行\r\n\r\n\n第二段\n  \n第三段\n", encoding="utf-8")
    docs = C.load_texts([f])
    assert docs == ["第一段\n第二行", "第二段", "第三段"]
    meta = C.build(C.Corpus(docs, str(f)), tmp_path / "out", val_fraction=0.34)
    assert meta["input"] == "text" and meta["n_poems"] == 3 and meta["n_val"] == 1
    assert not (tmp_path / "out" / "poems.jsonl").exists()
    with pytest.raises(TianciError, match="does not exist"):
        C.load_texts([tmp_path / "missing.txt"])


def test_missing_source_dir(tmp_path):
    """Guards: a traceback (or a silent empty corpus) when --source points nowhere."""
    with pytest.raises(TianciError, match="nowhere.*TIANCI_POETRY_SOURCE"):
        C.load_poems(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TianciError, match="no 宋词/ci.song"):
        C.load_poems(tmp_path / "empty")


def test_malformed_json_names_file_and_poem_index(tree):
    """Guards: a bare JSONDecodeError that does not say which file and which poem is broken."""
    f = tree / "宋词" / "ci.song.1000.json"
    good = json.dumps([poem(0), poem(1)], ensure_ascii=False)
    f.write_text(good[:-1] + ', {"rhythmic": "x", "author": oops}]', encoding="utf-8")
    with pytest.raises(TianciError, match=r"ci\.song\.1000\.json: malformed JSON in poem index 2"):
        C.load_poems(tree)
    f.write_text(json.dumps([poem(0), {"rhythmic": "x", "paragraphs": ["a"]}]), encoding="utf-8")
    with pytest.raises(TianciError, match=r"ci\.song\.1000\.json: poem index 1 has no string field 'author'"):
        C.load_poems(tree)
    f.write_text(json.dumps({"not": "a list"}), encoding="utf-8")
    with pytest.raises(TianciError, match="expected a JSON array"):
        C.load_poems(tree)


def test_poem_without_paragraphs_is_skipped_and_reported(tree, tmp_path):
    """Guards: an empty poem written as a bare title (or crashing the build) instead of a counted skip."""
    f = tree / "宋词" / "ci.song.0.json"
    f.write_text(json.dumps([poem(0), {**poem(1), "paragraphs": []}, {**poem(2), "paragraphs": ["  "]}],
                            ensure_ascii=False), encoding="utf-8")
    meta = build_tree(tree, tmp_path / "out")
    assert meta["skipped"] == {"no_paragraphs": 2} and meta["n_poems"] == 18 - 4 + 1
    skipped: list[str] = []
    C.load_poems(tree, skipped=skipped)
    assert "ci.song.0.json: poem index 1" in skipped[0] and "poem index 2" in skipped[1]


def test_empty_corpus(tmp_path):
    """Guards: writing empty bins (training then crashes far away) when every poem was skipped."""
    root = make_tree(tmp_path / "p", per_file=0, numbers=(0,), nantang=0)
    with pytest.raises(TianciError, match="empty"):
        build_tree(root, tmp_path / "out")
    with pytest.raises(TianciError, match="at least 2"):
        C.build(C.Corpus(["一首"], "x"), tmp_path / "out2")
    with pytest.raises(TianciError, match="val-fraction"):
        C.build(C.Corpus(["一", "二"], "x"), tmp_path / "out3", val_fraction=1.5)


def test_text_without_blank_lines_says_what_was_found_and_what_to_do(tmp_path, monkeypatch, capsys):
    """Guards: `prepare --text` on a file of poems with no blank line between them failing with
    "a per-poem split needs at least 2 poems/documents, got 1": true, but it did not say that the
    whole file was read as one document, or why (issue 10). Now one line: the file, what it holds,
    and the two ways out; nothing is written."""
    from tianci.cli import main
    from tianci.commands.prepare import _one_document
    from tianci.errors import DataError

    monkeypatch.chdir(tmp_path)
    Path("poems.txt").write_text("春花秋月何时了\n往事知多少\n小楼昨夜又东风\n", encoding="utf-8")
    e = _one_document("poems.txt", C.load_texts(["poems.txt"])[0], 0.1)
    assert isinstance(e, DataError) and e.param == "text"
    assert main(["prepare", "--text", "poems.txt", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tianci prepare: error: poems.txt: 3 lines, 19 characters and no blank line, so 1 "
                          "document: a per-poem split needs at least 2, separated by blank lines; ")
    assert "put a blank line between poems" in err and "--split tail" in err and "10%" in err
    assert not Path("out").exists()
    assert main(["prepare", "--text", "poems.txt", "--out", "out", "--split", "tail"]) == 0  # the way out works


def test_never_clobbers_an_unrelated_directory(tree, tmp_path):
    """Guards: prepare overwriting files in a directory that is not a tianci data directory."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(TianciError, match="not empty.*--force"):
        build_tree(tree, out)
    build_tree(tree, out, force=True)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me" and (out / "meta.json").exists()
    build_tree(tree, out)  # a tianci data directory may be re-prepared in place
    assert sorted(p.name for p in out.iterdir()) == sorted([*C.OUTPUTS, "manifest.json", "notes.txt"])


def _cli(*args, env_source=None):
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("TIANCI_POETRY_SOURCE", None)
    return subprocess.run([sys.executable, "-m", "tianci", "prepare", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_prepare_end_to_end(tree, tmp_path):
    """Guards: `tianci prepare` failing as a command (argument wiring, summary, exit code)."""
    r = _cli("--source", str(tree), "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "poems 18" in r.stdout and "vocab" in r.stdout
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["n_poems"] == 18


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    """Guards: a Python traceback instead of a one-line error (exit 2) for a missing source."""
    r = _cli("--source", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "missing" in r.stderr and not (tmp_path / "out").exists()


def test_real_corpus(poetry_dir, tmp_path):
    """Guards: the shared chinese-poetry corpus not giving its 21,050 + 45 poems, or bins not matching it."""
    meta = build_tree(poetry_dir, tmp_path / "ci")
    assert meta["n_poems"] == 21095 and meta["skipped"] == {"no_paragraphs": 0}
    assert meta["n_val"] == 2110 and meta["n_train"] == 18985
    assert meta["train_tokens"] == meta["train_chars"] and meta["vocab_size"] > 6000
    rows = (tmp_path / "ci" / "poems.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 21095 and json.loads(rows[-1])["author"] == "李煜"
    ids = np.fromfile(tmp_path / "ci" / "val.bin", dtype=np.uint16)
    assert len(ids) == meta["val_tokens"] and int(ids.max()) < meta["vocab_size"]


# ----------------------------------------------------------------------------- hardening (issue 10)

def test_deeply_nested_json_is_one_clear_error(tree):
    """Guards: a corpus file nested 100,000 deep dying with a RecursionError traceback."""
    (tree / "宋词" / "ci.song.0.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(C.DataError, match="ci.song.0.json.*nested too deeply"):
        C.load_poems(tree)


def test_directory_named_like_a_corpus_file(tree):
    """Guards: a directory called ci.song.3000.json crashing the reader with IsADirectoryError."""
    (tree / "宋词" / "ci.song.3000.json").mkdir()
    with pytest.raises(C.DataError, match="ci.song.3000.json is a directory"):
        C.load_poems(tree)


def test_prepare_never_touches_someone_elses_files(tmp_path):
    """Guards: `prepare --text t.txt --out DIR` over a folder holding a meta.json and a poems.jsonl
    overwriting the user's ci.txt and deleting poems.jsonl without --force. Refused, and with --force
    too (tianci never writes over a file it did not write); nothing changes."""
    t = tmp_path / "t.txt"
    t.write_text("春花秋月\n\n何时了\n\n往事知多少\n", encoding="utf-8")
    d = tmp_path / "mine"
    d.mkdir()
    for name, text in (("meta.json", '{"mine": 1}'), ("poems.jsonl", "{}\n"), ("ci.txt", "my text")):
        (d / name).write_text(text, encoding="utf-8")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for extra in ([], ["--force"]):
        r = _cli("--text", str(t), "--out", str(d), "--quiet", *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_mixed_data_set_is_caught(tree, tmp_path):
    """Guards: a new train.bin beside an old meta.json (a killed prepare of the old code) crashing
    `train` with an IndexError: reading the data dir names the mismatch."""
    out = tmp_path / "out"
    build_tree(tree, out)
    (out / "train.bin").write_bytes((out / "train.bin").read_bytes()[:-4])
    with pytest.raises(C.DataError, match="train.bin.*different builds"):
        C.read_meta(out)


def _signature(d: Path) -> dict:
    """The data set in d, without meta's timing: what must be all-old or all-new."""
    meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    meta.pop("seconds")
    return {"meta": meta, **{n: (d / n).read_bytes() for n in ("ci.txt", "train.bin", "val.bin", "tokenizer.json")}}


def test_prepare_swap_interrupted_between_renames(tmp_path, monkeypatch):
    """Guards: where the directory swap is two renames (no renameat2), a kill between them losing the
    data set: the next prepare (or salvage) puts the finished new set in place, and no folder is left."""
    from tianci import files

    out = tmp_path / "data"
    (tmp_path / "a.txt").write_text("春花\n\n秋月\n\n何时\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("小楼\n\n昨夜\n\n东风\n\n故国\n", encoding="utf-8")
    C.build(C.Corpus(C.load_texts([tmp_path / "a.txt"]), "a"), out)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real, calls = files.os.rename, []

    def killed_after_first(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real(a, b)

    monkeypatch.setattr(files.os, "rename", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        C.build(C.Corpus(C.load_texts([tmp_path / "b.txt"]), "b"), out)
    monkeypatch.undo()
    assert not out.exists()  # the moment between the renames
    files.salvage(out)
    assert (out / "ci.txt").read_text(encoding="utf-8").startswith("小楼") and C.read_meta(out)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_kill_during_prepare_leaves_old_or_new(tmp_path):
    """Guards: `kill -9` during `prepare` over an existing data dir leaving new ci.txt/poems.jsonl beside
    old meta/tokenizer/.bin files (6 of 10 tries before). After every kill the directory holds one
    whole data set, old or new, and the user's file in it survives; the next prepare cleans up."""
    import os
    import random
    import signal
    import time

    texts = {}
    for name, seed in (("a", 1), ("b", 2)):
        rng = random.Random(seed)
        docs = ["".join(rng.choice("春花秋月何时了往事知多少小楼昨夜又东风") for _ in range(40)) for _ in range(3000)]
        texts[name] = tmp_path / f"{name}.txt"
        texts[name].write_text("\n\n".join(docs), encoding="utf-8")
    refs = {}
    for name, t in texts.items():
        assert _cli("--text", str(t), "--out", str(tmp_path / f"ref-{name}"), "--quiet").returncode == 0
        refs[name] = _signature(tmp_path / f"ref-{name}")
    out = tmp_path / "data"
    assert _cli("--text", str(texts["a"]), "--out", str(out), "--quiet").returncode == 0
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    t0 = time.perf_counter()
    assert _cli("--text", str(texts["b"]), "--out", str(out), "--quiet").returncode == 0
    full = time.perf_counter() - t0
    rng, seen = random.Random(0), set()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for i in range(8):
        p = subprocess.Popen([sys.executable, "-m", "tianci", "prepare", "--text", str(texts["ab"[i % 2]]),
                              "--out", str(out), "--quiet"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.1) * full)
        p.send_signal(signal.SIGKILL)
        p.wait()
        sig = _signature(out)
        match = [n for n, ref in refs.items() if ref == sig]
        assert match, f"kill {i}: a mix of two data sets"
        seen.add(match[0])
        assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert _cli("--text", str(texts["a"]), "--out", str(out), "--quiet").returncode == 0
    assert _signature(out) == refs["a"] and (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # leftovers cleaned


KILL_AT = """
import os, signal, sys
n, K = [0], int(sys.argv[1])
for name in ("replace", "rename"):
    def moved(a, b, *rest, _real=getattr(os, name)):
        n[0] += 1
        if n[0] == K:
            os.kill(os.getpid(), signal.SIGKILL)  # die right before the K-th file move
        return _real(a, b, *rest)
    setattr(os, name, moved)
from tianci.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_kill_at_every_file_move_of_prepare(tmp_path):
    """Guards: prepare writing the new files one by one into the live data dir, so a kill between two of
    them left a mix (the old code: a mix after a kill at the 3rd..6th move). A kill -9 right before each
    file move of a prepare, in turn, leaves the old data set whole; the next prepare cleans up. The
    user's own files in it are there after every kill too (a kill between the swap and moving them
    back once left them only in the hidden swapped-out folder)."""
    import os

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("春花\n\n秋月\n\n何时\n", encoding="utf-8")
    b.write_text("小楼\n\n昨夜\n\n东风\n\n故国\n", encoding="utf-8")
    out = tmp_path / "data"
    assert _cli("--text", str(a), "--out", str(out), "--quiet").returncode == 0
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "drafts").mkdir()
    (out / "drafts" / "1.txt").write_text("草稿", encoding="utf-8")

    def users_files_intact():
        return ((out / "notes.txt").read_text(encoding="utf-8") == "mine"
                and (out / "drafts" / "1.txt").read_text(encoding="utf-8") == "草稿")

    old = _signature(out)
    assert _cli("--text", str(b), "--out", str(tmp_path / "ref"), "--quiet").returncode == 0
    new = _signature(tmp_path / "ref")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for k in range(1, 30):
        r = subprocess.run([sys.executable, "-c", KILL_AT, str(k), "prepare", "--text", str(b), "--out", str(out),
                            "--quiet"], env=env, capture_output=True, timeout=120)
        if r.returncode == 0:
            assert _signature(out) != old and C.read_meta(out)  # no kill point left: the new set is in
            break
        assert r.returncode == -9 and _signature(out) in (old, new), f"killed before move {k}: a mix"
        assert users_files_intact(), f"killed before move {k}: the user's files are not in the data dir"
    else:
        pytest.fail("prepare never finished")
    assert k > 3  # the kills did land among the writes
    assert users_files_intact()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

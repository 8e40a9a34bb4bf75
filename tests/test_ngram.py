"""The counting model: exact counts, hand-computed losses, smoothing/backoff, sampling, run glue."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from tianci import corpus as C
from tianci.config import load_preset
from tianci.errors import TianciError
from tianci.ngram import NGram, read_bin, sample_run, train_run

REPO = Path(__file__).resolve().parents[1]


def test_exact_counts():
    """Guards: off-by-one n-gram counting (missing the first or last gram, wrong context totals)."""
    ids = [0, 1, 0, 1, 2]  # "abab c"
    m = NGram(order=2).fit(ids)
    assert m.vocab_size == 3
    assert dict(m.grams[0]) == {(0,): 2, (1,): 2, (2,): 1}
    assert dict(m.grams[1]) == {(0, 1): 2, (1, 0): 1, (1, 2): 1}
    assert dict(m.grams[2]) == {(0, 1, 0): 1, (1, 0, 1): 1, (0, 1, 2): 1}
    # c(h) counts only occurrences of h that are followed by a token
    assert m.totals[1] == {(0,): 2, (1,): 2} and m.totals[2] == {(0, 1): 2, (1, 0): 1}
    assert dict(m.types[1]) == {(0,): 1, (1,): 2}


def test_add_k_loss_matches_hand_computation():
    """Guards: a smoothing formula or loss averaging that differs from (c+k)/(c(h)+kV), mean over ids[1:]."""
    m = NGram(order=1, vocab_size=3, add_k=1.0).fit([0, 1, 0, 1, 2])
    # P(1|0) = (2+1)/(2+3), P(0|1) = P(2|1) = (1+1)/(2+3), P(2|0) = (0+1)/(2+3),
    # P(2|2) = (0+1)/(0+3): the last id 2 was never followed by anything
    assert m.loss([0, 1, 0, 2, 2]) == pytest.approx(
        -(math.log(3 / 5) + math.log(2 / 5) + math.log(1 / 5) + math.log(1 / 3)) / 4)
    assert m.loss([0, 1, 2, 2]) == pytest.approx(-(math.log(3 / 5) + math.log(2 / 5) + math.log(1 / 3)) / 3)


def test_witten_bell_matches_hand_computation():
    """Guards: the backoff mixing weights (T/(c+T)) or the uniform floor being wrong, which shifts every loss."""
    m = NGram(order=1, vocab_size=4).fit([0, 1, 0, 2])
    # unigram: c=(2,1,1,0), N=4, T=3: P0(w) = (c(w) + 3/4) / 7
    p0 = [(c + 0.75) / 7 for c in (2, 1, 1, 0)]
    # context 0 followed by {1: 1, 2: 1}: c=2, T=2: P(w|0) = (c(0,w) + 2 P0(w)) / 4
    assert m.prob([0], 1) == pytest.approx((1 + 2 * p0[1]) / 4)
    assert m.prob([0], 3) == pytest.approx(2 * p0[3] / 4)
    assert m.prob([3], 2) == pytest.approx(p0[2])  # unseen context: back off to the unigram
    assert m.prob([2], 0) == pytest.approx(p0[0])  # 2 was the last id: never followed, unseen as context
    ids = [1, 0, 3, 3]
    want = -(math.log(m.prob([1], 0)) + math.log(m.prob([0], 3)) + math.log(m.prob([3], 3))) / 3
    assert m.loss(ids) == pytest.approx(want)


@pytest.mark.parametrize("add_k", [0.0, 0.5])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_distribution_sums_to_one_and_agrees_with_prob(order, add_k):
    """Guards: an unnormalised model (a loss that is not a real cross-entropy) or prob/distribution drift."""
    ids = [0, 1, 2, 0, 1, 3, 0, 2, 2, 1, 0, 1, 2]
    m = NGram(order=order, vocab_size=6, add_k=add_k).fit(ids)
    for ctx in ([], [0], [0, 1], [1, 0, 1], [5, 5, 5], [4]):
        d = m.distribution(ctx)
        assert sum(d) == pytest.approx(1.0) and min(d) > 0
        assert d == pytest.approx([m.prob(ctx, w) for w in range(6)])
    # the grouped fast path of loss() equals the per-position definition
    val = [1, 0, 1, 2, 5, 4, 0, 3]
    slow = -sum(math.log(m.prob(val[max(0, t - order):t], val[t])) for t in range(1, len(val))) / (len(val) - 1)
    assert m.loss(val) == pytest.approx(slow)
    assert m.loss(ids, fitted=True) == pytest.approx(m.loss(ids))


def test_unseen_tokens_keep_val_loss_finite():
    """Guards: an infinite val loss (log 0) for a character or pair never seen in training."""
    m = NGram(order=3, vocab_size=10).fit([1, 2, 3, 1, 2, 3])
    assert math.isfinite(m.loss([9, 8, 7, 1, 2, 4]))


def test_save_load_round_trip(tmp_path):
    """Guards: a saved model that loads with different counts (different loss or samples)."""
    ids = [0, 1, 2, 0, 1, 3, 0, 2, 2, 1, 0, 1, 2]
    m = NGram(order=2, vocab_size=5).fit(ids)
    m.save(tmp_path / "m.json")
    m2 = NGram.load(tmp_path / "m.json")
    assert m2.grams == m.grams and m2.totals == m.totals and m2.types == m.types
    assert m2.loss([4, 0, 1, 2]) == m.loss([4, 0, 1, 2])
    assert m2.sample([0], 30, seed=5) == m.sample([0], 30, seed=5)
    (tmp_path / "bad.json").write_text('{"order": 2}', encoding="utf-8")
    with pytest.raises(TianciError, match="malformed"):
        NGram.load(tmp_path / "bad.json")


def test_sampling_follows_the_counts():
    """Guards: a sampler that ignores the counts (or the seed): a deterministic chain must be reproduced."""
    m = NGram(order=2, vocab_size=3).fit([0, 1, 2] * 200)
    out = m.sample([0, 1], 60, seed=1)
    assert len(out) == 60 and out == m.sample([0, 1], 60, seed=1)
    follows = sum(out[i + 1] == (out[i] + 1) % 3 for i in range(59))
    assert follows >= 55  # the backoff mass is ~1/600 per step
    cold = m.sample([0, 1], 60, temperature=0.5, seed=1)
    assert sum(cold[i + 1] == (cold[i] + 1) % 3 for i in range(59)) >= 57
    with pytest.raises(TianciError, match="temperature"):
        m.sample([0], 5, temperature=0)
    with pytest.raises(TianciError, match="order"):
        NGram(order=0)


def test_read_bin_little_endian(tmp_path):
    """Guards: reading .bin files with the machine's byte order instead of nanoGPT's little-endian."""
    (tmp_path / "x.bin").write_bytes(bytes([1, 0, 0, 1, 255, 255]))
    assert list(read_bin(tmp_path / "x.bin")) == [1, 256, 65535]
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(TianciError, match="whole number"):
        read_bin(tmp_path / "odd.bin")
    assert isinstance(read_bin(tmp_path / "x.bin"), array)


def test_torch_free_imports():
    """Guards: `import tianci` or the counting model pulling in torch (or numpy) and their start-up cost."""
    code = ("import sys, tianci, tianci.ngram, tianci.tokenizer, tianci.corpus, tianci.config\n"
            "import tianci.commands.prepare\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO / "src")}, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def data_dir(tmp_path) -> Path:
    docs = [f"浣溪沙 晏殊\n一曲新词酒一杯，\n去年天气旧亭台。{i}" for i in range(10)]
    C.build(C.Corpus(docs, "test"), tmp_path / "data")
    return tmp_path / "data"


def test_train_and_sample_run(data_dir, tmp_path):
    """Guards: the counting-model run directory missing a file the sampler/plotter/ladder reads."""
    preset = load_preset("counting")
    assert preset.kind == "ngram" and preset.ngram.order == 1 and preset.rung == "counting bigram"
    run = tmp_path / "run"
    res = train_run(preset, data_dir, run, quiet=True)
    files = sorted(p.name for p in run.iterdir())
    assert files == ["config.json", "manifest.json", "metrics.jsonl", "ngram.json", "tokenizer.json"]
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert cfg["kind"] == "ngram" and cfg["preset"]["ngram"]["order"] == 1 and cfg["data"]["n_poems"] == 10
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 0
    assert res["val_bpc"] == pytest.approx(res["val_loss"] / math.log(2))
    assert "val_loss_per_token" not in res  # char tokens: per token == per character
    vocab = cfg["data"]["vocab_size"]
    assert 0 < res["train_loss"] < res["val_loss"] < math.log(vocab)  # better than uniform guessing
    texts = sample_run(run, "一曲", max_new_tokens=20, seed=3, num_samples=2)
    assert len(texts) == 2 and all(t.startswith("一曲") and len(t) == 22 for t in texts)
    assert texts == sample_run(run, "一曲", max_new_tokens=20, seed=3, num_samples=2)
    with pytest.raises(TianciError, match="'X'.*position 1"):
        sample_run(run, "一X")
    with pytest.raises(TianciError, match="already holds a tianci run.*--force"):
        train_run(preset, data_dir, run, quiet=True)
    train_run(preset, data_dir, run, force=True, quiet=True)
    with pytest.raises(TianciError, match="no meta.json"):
        train_run(preset, tmp_path / "nodata", tmp_path / "run2", quiet=True)


def test_real_corpus_bigram(poetry_dir, tmp_path):
    """Guards: the counting bigram's val loss on the real corpus drifting (6.84 bits/char on the
    seeded per-poem split when this test was written). Pure-Python counts, no float kernels: the
    figure is the same on every CPU. (Its speed is not asserted: a wall-clock limit fails on a busy
    or slow machine and proves nothing about the code.)"""
    skipped: list[str] = []
    poems = C.load_poems(poetry_dir, skipped=skipped)
    C.build(C.Corpus([p.text() for p in poems], str(poetry_dir), poems), tmp_path / "ci")
    res = train_run(load_preset("counting"), tmp_path / "ci", tmp_path / "run", quiet=True)
    assert 6.7 < res["val_bpc"] < 7.0 and res["train_loss"] < res["val_loss"]

"""The independent judges of composed ci (tianci.ci.judge) and the machine Turing test."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from tianci.ci.judge import BOS, ClauseEnds, KneserNey, craft, normalise

ALPHA = "春花秋月何时了往事知多少小楼昨夜又东风"


def corpus(n=300, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        # a little structure (bigram preferences) so that higher orders matter
        s, prev = [], rng.choice(ALPHA)
        for _ in range(rng.randint(8, 20)):
            prev = ALPHA[(ALPHA.index(prev) + rng.choice([1, 1, 2, 5])) % len(ALPHA)]
            s.append(prev + ("，" if rng.random() < 0.15 else ""))
        out.append("".join(s) + "。")
    return out


def reference_probs(texts, order, queries):
    """Interpolated modified Kneser–Ney written straight from its definition over symbol tuples
    (no codes, no vectorisation): raw counts at the top order, distinct left extensions below."""
    seqs = [tuple([BOS] * (order - 1)) + tuple(normalise(t)) for t in texts]
    top = Counter()
    for s in seqs:
        for i in range(order - 1, len(s)):
            top[s[i - order + 1:i + 1]] += 1
    counts = {order: top}
    for k in range(order - 1, 0, -1):
        counts[k] = Counter(g[1:] for g in counts[k + 1])

    def discounts(c):
        n = [sum(1 for v in c.values() if v == i) for i in range(1, 5)]
        if min(n) == 0:
            return [0.5, 0.5, 0.5]
        y = n[0] / (n[0] + 2 * n[1])
        d = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
        return [min(max(x, 0.05), hi) for x, hi in zip(d, (1, 2, 3))]

    D = {k: discounts(counts[k]) for k in counts}
    by_hist = {k: defaultdict(dict) for k in counts}
    for k, c in counts.items():
        for g, v in c.items():
            by_hist[k][g[:-1]][g[-1]] = v
    vocab = {ch for t in texts for ch in normalise(t)}
    V = len(vocab) + 1  # + UNK

    def d_of(k, c):
        return D[k][min(c, 3) - 1] if c else 0.0

    def p(k, hist, w):
        if k == 1:
            row = by_hist[1][()]
            tot = sum(row.values())
            gamma = sum(d_of(1, c) for c in row.values()) / tot
            c = row.get(w, 0)
            return max(c - d_of(1, c), 0) / tot + gamma / V
        h = hist[-(k - 1):]
        row = by_hist[k].get(h)
        lower = p(k - 1, hist, w)
        if not row:
            return lower
        tot = sum(row.values())
        gamma = sum(d_of(k, c) for c in row.values()) / tot
        c = row.get(w, 0)
        return max(c - d_of(k, c), 0) / tot + gamma * lower

    out = []
    for t in queries:
        s = tuple([BOS] * (order - 1)) + tuple(normalise(t))
        out += [p(order, s[i - order + 1:i], s[i]) for i in range(order - 1, len(s))]
    return np.array(out)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_kneser_ney_matches_the_definition(order):
    """Guards the vectorised Kneser–Ney (int64 n-gram codes, searchsorted look-ups) drifting from
    the textbook recursion: every probability equals the brute-force one, seen and unseen contexts."""
    train = corpus()
    kn = KneserNey(train, order)
    queries = corpus(20, seed=1) + ["春春春春。", "东风，夜小楼。"]
    cat, tgt = kn._windows([kn._encode(q) for q in queries])
    np.testing.assert_allclose(kn.probs(cat, tgt), reference_probs(train, order, queries), rtol=1e-9)


def test_kneser_ney_is_a_distribution():
    """Guards probability mass leaking or doubling: P(· | context) sums to 1 over the vocabulary,
    for a seen context, an unseen one, and an unknown character in the context."""
    kn = KneserNey(corpus(), 4)
    symbols = np.array(sorted(set(kn.ids.values()) | {1}), dtype=np.int64)
    for ctx in ("春花秋", "秋秋秋", "猫狗"):
        enc = kn._encode(ctx)[:-1]  # drop the final break: a context mid-clause
        cat = np.array([BOS] * 3 + enc + [0], dtype=np.int64)
        total = 0.0
        for w in symbols:
            cat[-1] = w
            total += kn.probs(cat, np.array([len(cat) - 1]))[0]
        assert math.isclose(total, 1.0, rel_tol=1e-9), (ctx, total)
    assert kn.nll("春花秋月何时了。") < kn.nll("了时何月秋花春。")  # it learnt the order


def test_clause_ends_and_craft():
    """Guards broken clauses, reduplication and repeated rhymes being counted wrongly (or a 叠 the
    form asks for counted as a fault)."""
    texts = ["不知春去也，花落水流红。"] * 60 + ["春风吹不断，明月照何处。"] * 60
    ends = ClauseEnds(texts, min_count=50)
    assert "不" in ends.rare and "红" not in ends.rare and "处" not in ends.rare
    c = craft("花落春不，红红月处。", ends)
    assert (c.clauses, c.broken, c.pairs, c.redup, c.chars, c.distinct) == (2, 1, 6, 1, 8, 7)
    rhyme = (-1, 0, -1, 0, -1, 0)
    assert craft("春红，花红，月东。", ends, rhyme).rhyme_repeats == 1
    assert craft("春红，花红，月东。", ends, rhyme, (-1, -1, -1, 1, -1, -1)).rhyme_repeats == 0
    assert normalise("春，风、\n吹。") == "春/风/吹/"


def test_turing_test_sees_an_obvious_machine():
    """Guards the classifier's labels or features being swapped: when every composed poem has 不
    and no real one does, the machine is found (AUC far above chance, 0.5; swapped labels would put
    it far below) and 不 is what gives it away."""
    pytest.importorskip("sklearn")
    from tianci.ci.compose_eval import turing_test

    rng = random.Random(0)
    real = ["".join(rng.choice("春花秋月何时了往事") for _ in range(12)) + "。" for _ in range(100)]
    gen = [t[:5] + "不" + t[6:] for t in ("".join(rng.choice("春花秋月何时了往事") for _ in range(12)) + "。"
                                          for _ in range(100))]
    r = turing_test(gen, real, seed=0)
    assert r["auc"] > 0.9 and r["n"] == 200 and r["machine"][0] == "不", r


def test_critic_scores_exactly_as_scikit_learn_and_survives_a_round_trip(tmp_path):
    """Guards the critic's numpy scoring drifting from the TF-IDF + logistic regression it was fitted as
    (composing does not import scikit-learn, so a wrong tf, idf or norm would silently rerank by
    nonsense), the saved file losing precision, and the sign: + is the machine."""
    pytest.importorskip("sklearn")
    from tianci.ci.critic import Critic

    rng = random.Random(1)
    real = corpus(120, seed=2)
    gen = ["".join(rng.choice("春花不间") + c for c in t[:6]) + "，不知。" for t in corpus(120, seed=3)]
    c = Critic.fit(gen, real)
    assert c.cv_auc > 0.9 and (c.n_gen, c.n_real) == (120, 120)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    ref = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
                        LogisticRegression(C=c.C, max_iter=2000)).fit([normalise(t) for t in gen + real],
                                                                      [1] * 120 + [0] * 120)
    probe = corpus(20, seed=9) + gen[:5] + ["", "龘龘。"]  # unseen poems, drafts, nothing known
    want = ref.decision_function([normalise(t) for t in probe])
    np.testing.assert_allclose(c.logits(probe), want, rtol=1e-9, atol=1e-9)
    assert c.logits(gen[:20]).mean() > 0 > c.logits(real[:20]).mean()
    c.save(tmp_path)
    back = Critic.load(tmp_path)
    np.testing.assert_allclose(back.logits(probe), want, rtol=1e-9, atol=1e-9)
    assert Critic.load(tmp_path / "elsewhere") is None


def test_the_judge_adds_the_critic_log_odds_to_its_score():
    """Guards a critic that is loaded but never consulted: the judge's score of a draft is its
    fluency and craft plus critic_weight times the critic's log-odds, so a machine-like draft loses."""
    pytest.importorskip("sklearn")
    from tianci.ci.critic import Critic
    from tianci.ci.judge import Judge

    real = corpus(100, seed=4)
    gen = [t[:4] + "不" + t[5:] for t in corpus(100, seed=5)]
    critic = Critic.fit(gen, real)
    plain = Judge(KneserNey(real, 3), ClauseEnds(real))
    judged = Judge(plain.lm, plain.ends, critic=critic, critic_weight=2.0)
    texts = [gen[0], real[0]]
    want = [a + 2.0 * b for a, b in zip(plain.scores(texts), critic.logits(texts))]
    assert judged.scores(texts) == pytest.approx(want)
    assert judged.scores(texts)[0] - judged.scores(texts)[1] > plain.scores(texts)[0] - plain.scores(texts)[1]

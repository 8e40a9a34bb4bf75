"""A critic that has read both sides: a character n-gram logistic regression trained to tell one run's
own drafts from real ci of the train split, so that composing can keep, of several drafts, the one that
reads least like this machine.

Why: compose-eval's machine Turing test finds the machine by what it overuses (generic words: 春风, 人间,
clauses opened by 一) and the human by what the model rarely dares (specific things: 书, 枕, 菊). More
fluent sampling does not fix that (docs/compose.md §6); choosing among drafts by the odds a critic gives
them does, in the direction the test looks. The critic's logit estimates log p_model(x) / p_real(x) over
its features, so keeping the lowest of M drafts moves the poems toward real ci.

Honesty: the critic is fitted on train-split poems and on drafts composed with seeds compose-eval never
uses; the Turing test that judges the result is a fresh classifier on the val poems. Both read character
n-grams, so docs/compose.md also reports what the other measures (the independent judge, craft) say.

Scoring is numpy: TF-IDF of the 1-3-grams of `judge.normalise(text)` computed exactly as scikit-learn's
`TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)` computes it (a test checks the
two agree), then the linear score; composing needs no scikit-learn. Fitting does (`tianci[eval]`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import TianciError
from .judge import normalise

FILE = "critic.json"
NGRAMS = (1, 3)
C_GRID = (1.0, 3.0, 10.0, 30.0)


@dataclass
class Critic:
    grams: list[str]  # the feature n-grams, in the order of idf and coef
    idf: np.ndarray  # (F,) smoothed inverse document frequency
    coef: np.ndarray  # (F,) weights: + toward the machine
    intercept: float
    C: float  # the regularisation the cross-validation chose
    cv_auc: float  # the critic's own cross-validated ROC AUC on what it was fitted to
    n_gen: int
    n_real: int
    index: dict[str, int] = field(init=False, repr=False)  # gram -> feature, derived from grams

    def __post_init__(self):
        self.index = {g: i for i, g in enumerate(self.grams)}

    def summary(self) -> dict:
        """What a report says about the critic that chose the drafts."""
        return {"n_gen": self.n_gen, "n_real": self.n_real, "grams": len(self.grams), "C": self.C,
                "cv_auc": self.cv_auc}

    def logits(self, texts: list[str]) -> np.ndarray:
        """(len(texts),) the log-odds that each text is the machine's: lower reads more like real ci."""
        out = np.empty(len(texts))
        for k, text in enumerate(texts):
            counts = Counter(g for g in _ngrams(normalise(text)) if g in self.index)
            if not counts:
                out[k] = self.intercept
                continue
            ids = np.fromiter((self.index[g] for g in counts), dtype=np.int64, count=len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
            x = tf * self.idf[ids]
            out[k] = float(x @ self.coef[ids]) / float(np.sqrt(x @ x)) + self.intercept
        return out

    @classmethod
    def fit(cls, gen: list[str], real: list[str], seed: int = 0) -> "Critic":
        """Fit on drafts (label 1) and real poems (0); C is the best of C_GRID by 5-fold ROC AUC."""
        if min(len(gen), len(real)) < 5:
            raise TianciError(f"a critic needs at least 5 poems a side (got {len(gen)} drafts, {len(real)} real)",
                              param="critic", allowed=">= 5 a side")
        auc, C, _, m = cross_validate(gen, real, C_GRID, seed, what="critic")
        vec, lr = m[0], m[1]
        return cls([str(g) for g in vec.get_feature_names_out()], vec.idf_.astype(np.float64),
                   lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), C, float(auc), len(gen), len(real))

    def save(self, run_dir) -> Path:
        """critic.json in the run directory, owned by the run (a retrained run drops a stale critic)."""
        from ..files import Manifest, atomic_write

        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        d["idf"], d["coef"] = self.idf.tolist(), self.coef.tolist()
        path = atomic_write(Path(run_dir) / FILE, json.dumps(d, ensure_ascii=False))
        manifest = Manifest.read(run_dir)
        if manifest is not None:
            manifest.add(FILE)
        return path

    @classmethod
    def load(cls, run_dir) -> "Critic | None":
        """The run's critic, or None when it has none (`tianci critic` writes one)."""
        path = Path(run_dir) / FILE
        if not path.is_file():
            return None
        from ..files import read_json

        from ..errors import DataError

        d = read_json(path, "critic")
        want = {f.name for f in fields(cls) if f.init}
        if not isinstance(d, dict) or set(d) != want:
            raise DataError(f"critic {path} is not a critic tianci wrote (fit a new one: tianci critic --run "
                            f"{Path(run_dir)})")
        d["idf"], d["coef"] = np.asarray(d["idf"], dtype=np.float64), np.asarray(d["coef"], dtype=np.float64)
        return cls(**d)


def cross_validate(gen: list[str], real: list[str], grid, seed: int = 0, folds: int = 5, what: str = "critic"):
    """The one machine-vs-real classifier, for the critic and compose-eval's Turing test alike: character
    1-3-gram TF-IDF + logistic regression over `judge.normalise(text)`, gen labelled 1, real 0; C the
    first best of `grid` by stratified k-fold ROC AUC. Returns (auc, C, the cross-validated P(machine)
    of every text, the classifier refitted on all of them)."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise TianciError(f"the {'critic' if what == 'critic' else 'machine Turing test'} needs scikit-learn",
                          param=what, hints={"cli": "pip install 'tianci[eval]'"}) from None
    X = [normalise(t) for t in gen + real]
    y = [1] * len(gen) + [0] * len(real)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)

    def pipe(C):
        return make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, sublinear_tf=True),
                             LogisticRegression(C=C, max_iter=2000))
    best = None
    for C in grid:
        p = cross_val_predict(pipe(C), X, y, cv=cv, method="predict_proba")[:, 1]
        auc = roc_auc_score(y, p)
        if best is None or auc > best[0]:
            best = (float(auc), C, p)
    auc, C, p = best
    return auc, C, p, pipe(C).fit(X, y)


def _ngrams(text: str):
    """scikit-learn's char analyzer on a text without white space: every n-gram, n in NGRAMS."""
    lo, hi = NGRAMS
    for n in range(lo, hi + 1):
        for i in range(len(text) - n + 1):
            yield text[i:i + n]


SEED = 100_000  # drafts for the critic use seeds from here: compose-eval's are 0 + its 词牌 index
# drafts (and real train-split poems) per 词牌: 40 rather than 20 took compose-eval's AUC from 0.817 to
# 0.741 at judge 4.858 (real 4.768), fitting in ~6 CPU minutes instead of ~3 (docs/compose.md §9)
K = 40


def fit_for_run(model, tokenizer, cp, composer, *, top: int = 60, k: int = K, seed: int = SEED,
                log=None) -> Critic:
    """Compose k one-draft poems for each of the top 词牌 (the model's own sampling defaults, seeds
    seed + i) and fit a critic against as many real train-split poems of the same 词牌."""
    from .compose import compose_batch
    from .compose_eval import top_cipai

    gen, real = [], []
    for n, name in enumerate(top_cipai(cp, top)):
        ent = cp.resolve(name)
        train = [cp.corpus.poems[i] for t in ent.titles for i in cp.corpus.by_title.get(t, [])
                 if cp.corpus.poems[i].split != "val"][:k]
        if not train:
            continue
        res = compose_batch(model, tokenizer, cp.form(name), len(train), seed=seed + n, composer=composer,
                            candidates=1)
        gen += [r.text for r in res]
        real += ["\n".join(p.paragraphs) for p in train]
        if log:
            log(f"{name}: {len(res)} drafts, {len(train)} real")
    return Critic.fit(gen, real)

# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 1 章 计数的二元模型：30 行纯 Python
# # Chapter 1. The counting bigram: 30 lines of pure Python
#
# 最简单的“语言模型”：数一数每个字后面跟着什么字，然后照着这个比例掷骰子。没有神经网络，没有 PyTorch，
# 只有 `dict` 和 `random`。这就是教程的 `simplemodel.py`。写完以后，我们用**损失（loss）**给它打分，
# 再认识 tianci 里同样的模型 `tianci.ngram`。
#
# The simplest language model: count which character follows which, then roll dice in those proportions.
# No network, no PyTorch, only `dict` and `random`: the tutorial's `simplemodel.py`. Then we score it with
# a **loss** and meet the same model in tianci, `tianci.ngram`.

# %%
from coursekit import *

from tianci.ngram import read_bin
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
# The short mode (CI) counts the first 300k training characters only; readers count all 1.85M.
n_train = budget(None, 300_000)
train_text = tok.decode(read_bin(data / "train.bin")[:n_train])
val_text = tok.decode(read_bin(data / "val.bin"))
V = tok.vocab_size
print(f"train {len(train_text):,} characters, val {len(val_text):,}, vocabulary {V:,}")

# %% [markdown]
# ## 1. 你来写：数数、采样 / Your turn: count, then sample
#
# 下面这一格就是整个模型。`counts[a][b]` 是“字 a 后面紧跟着字 b”出现的次数。要写下一个字时，看看当前这个字
# 后面都跟过什么，按次数的比例随机挑一个。（可以先把这一格删掉，自己写一遍。）
#
# The cell below is the whole model. `counts[a][b]` is how often character b came right after character a.
# To write the next character, look at what followed the current one and pick at random in proportion to
# the counts. (Try deleting the cell and writing it yourself.)

# %%
import math
import random
from collections import Counter, defaultdict

# --- fit: count every pair of neighbouring characters ---------------------------------------
counts = defaultdict(Counter)  # counts[a][b] = how often b followed a
for a, b in zip(train_text, train_text[1:]):
    counts[a][b] += 1
totals = {a: sum(c.values()) for a, c in counts.items()}  # how often a was followed by anything


# --- sample: one character at a time, each drawn from what followed the last one ------------
def sample(start: str, n: int, rng: random.Random) -> str:
    out = start
    for _ in range(n):
        nxt = counts[out[-1]]
        if not nxt:  # a character nothing ever followed: pick any character
            out += rng.choice(tok.chars)
            continue
        out += rng.choices(list(nxt), weights=list(nxt.values()))[0]
    return out


# --- probability and loss ------------------------------------------------------------------
def prob(a: str, b: str, alpha: float) -> float:
    """P(b | a) with add-alpha smoothing: every pair gets alpha extra counts, so none is 0."""
    return (counts[a][b] + alpha) / (totals.get(a, 0) + alpha * V)


def loss(text: str, alpha: float) -> float:
    """Mean negative log-probability of each character given the one before (nats per char)."""
    return -sum(math.log(prob(a, b, alpha)) for a, b in zip(text, text[1:])) / (len(text) - 1)


rng = random.Random(1337)
for _ in range(3):
    print(sample("春", 40, rng).replace("\n", " / "))

# %% [markdown]
# 读起来像词的碎片：每两个相邻的字都“说得通”，但整句没有意思——模型只看前一个字。
#
# It reads like fragments of ci: every two neighbours make sense, the whole does not, because the model
# sees only the previous character.
#
# **概率表的一行 / One row of the table.** “春”后面最常见的字：/ What most often follows 春:

# %%
row = counts["春"]
total = sum(row.values())
for b, c in row.most_common(8):
    print(f"春{b!r:<5} {c:>5}  P = {c / total:.3f}")

# %% [markdown]
# ## 2. 损失：模型有多吃惊 / The loss: how surprised the model is
#
# 怎么知道模型好不好？让它读它**没见过**的验证集，每读一个字，问它“你给这个字的概率是多少”。概率 p 越大越好；
# 我们取 −ln p（p = 1 时为 0，p 越小越大），再对所有字取平均，这就是**损失（loss）**，单位是 **nats**
# （自然对数）。除以 ln 2 换成 **bits**：1 bit 就是“在两个同样可能的字里猜一个”那么多的不确定。
#
# 如果某一对字在训练集里从来没出现过，p = 0，−ln 0 是无穷大。所以给每一对都加一点点假想的次数 alpha
# （**平滑 / smoothing**）。
#
# How good is the model? Let it read the validation set, which it never saw, and ask for the probability
# it gave each next character. Higher is better; we take −ln p (0 when p = 1, large when p is small) and
# average it over all characters: that is the **loss**, in **nats** (natural log). Divided by ln 2 it is in
# **bits**: one bit is the uncertainty of guessing between two equally likely characters. A pair never seen
# in training would get p = 0 and an infinite loss, so every pair gets a small pretend count alpha
# (**smoothing**).

# %%
for alpha in (1.0, 0.1, 0.01):
    L = loss(val_text, alpha)
    print(f"alpha {alpha:<5} val loss {L:.3f} nats/char = {L / LN2:.2f} bits/char")
print(f"uniform guessing: ln {V} = {math.log(V):.3f} nats = log2 {V} = {math.log2(V):.2f} bits")

# %% [markdown]
# 乱猜（每个字的概率都是 1/6104）的损失是 8.72 nats（12.58 bits）。数数就把它降到了 5 nats 以下。
# Uniform guessing costs 8.72 nats (12.58 bits) per character; counting brings it below 5.

# %% [markdown]
# ## 3. tianci 里的同一个模型 / The same model in tianci: `tianci.ngram`
#
# `tianci.ngram.NGram` 是同一个想法，写得更快（用 `Counter(zip(...))` 一次数完）、更一般（`order` 个字的上下文），
# 而且平滑方法更聪明：没见过的组合“退回”到更短的上下文（Witten-Bell 回退），而不是一律加 alpha。
# 它就是 `tianci train --preset counting`，也是 docs/ladder.md 表里的第一行。
#
# `tianci.ngram.NGram` is the same idea, faster (one `Counter(zip(...))` pass), more general (`order`
# characters of context) and with a better smoothing: an unseen pair falls back to a shorter context
# (Witten-Bell backoff) instead of a flat alpha. It is `tianci train --preset counting`, and the first row of
# the table in docs/ladder.md.

# %%
from tianci.ngram import NGram

show_source(NGram.fit)

# %%
train_ids, val_ids = read_bin(data / "train.bin")[:n_train], read_bin(data / "val.bin")
with Timer() as t:
    ng = NGram(order=1, vocab_size=V).fit(train_ids)
tr, va = ng.loss(train_ids, fitted=True), ng.loss(val_ids)
print(f"fitted in {t.seconds:.1f}s")
print(f"train {tr:.3f} nats/char ({tr / LN2:.2f} bits)   val {va:.3f} nats/char ({va / LN2:.2f} bits)")
doc = docs_ladder_row("counting")
print(f"docs/ladder.md, row 'counting': train {doc['train nats/char (bits)']}, val {doc['val nats/char (bits)']}")
print("sample:", (tok.decode(tok.encode("春") + ng.sample(tok.encode("春"), 40, seed=1337))).replace("\n", " / "))

# %% [markdown]
# 训练损失（4.28）比验证损失（4.74）低得多：模型把训练集“背”下来了一部分，这叫**过拟合（overfitting）**。
# 验证集上的数字才是诚实的分数。
#
# The train loss (4.28) is far below the val loss (4.74): the model has partly memorised its training set,
# **overfitting**. The validation number is the honest score.
#
# 更长的上下文呢？`order=2` 看前两个字。/ More context? `order=2` looks at two characters:

# %%
ng2 = NGram(order=2, vocab_size=V).fit(train_ids)
va2 = ng2.loss(val_ids)
print(f"order 2: val {va2:.3f} nats/char ({va2 / LN2:.2f} bits)   vs order 1: {va:.3f}")

# %% [markdown]
# ## 练习 / Exercise
#
# 用你写的 `loss` 函数，算 alpha = 1（“加一平滑”）时验证集的损失，单位 **bits** 每字，赋给 `answer`。
# 检查格会用 `NGram(order=1, add_k=1.0)`——tianci 的另一份实现——重新算一遍来比较。
#
# With your `loss` function, compute the validation loss with alpha = 1 (add-one smoothing), in **bits** per
# character, into `answer`. The check recomputes it with tianci's own implementation,
# `NGram(order=1, add_k=1.0)`.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    answer = loss(val_text, 1.0) / LN2

# %%
expected = NGram(order=1, vocab_size=V, add_k=1.0).fit(train_ids).loss(val_ids) / LN2
check("val bits/char with add-one smoothing", answer, expected, tol=1e-6)

# %% [markdown]
# **下一章 / Next:** [第 2 章 机器学习的写法 / machine-learning style](02_ml_style.py)

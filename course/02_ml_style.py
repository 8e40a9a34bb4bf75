# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 2 章 机器学习的写法：batch、(B, T, C)、forward、generate
# # Chapter 2. Machine-learning style: batches, (B, T, C), forward, generate
#
# 上一章的模型一次只看一对字。神经网络不这样读书：它一次拿一**批（batch）**文本片段，并行地对每个位置
# 打分。本章把同一个计数模型改写成神经网络的样子（教程的 `simplebigrammodel.py`），还不用 PyTorch，只用
# numpy。以后每一章的模型都长这个样子：`forward(idx, targets) -> (logits, loss)` 和 `generate`。
#
# The model of chapter 1 looked at one pair at a time. Networks read differently: they take a **batch** of
# text windows and score every position in parallel. This chapter rewrites the same counting model in that
# shape (the tutorial's `simplebigrammodel.py`), with numpy, no PyTorch yet. Every later model has this
# shape: `forward(idx, targets) -> (logits, loss)` and `generate`.

# %%
from coursekit import *

import numpy as np

from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
V = tok.vocab_size
train_ids = np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64)
val_ids = np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64)

# %% [markdown]
# ## 1. 一批数据 / A batch
#
# 从训练数据里随机挑 B 个起点，每个起点切出 T 个字作为输入 `x`；目标 `y` 是同一段往后挪一个字。
# 所以 `y[b, t]` 就是 `x[b, t]` 后面那个字：一段 T 个字的片段同时给出 T 个“下一个字是什么”的题目。
#
# Pick B random starting points and cut T characters from each: the input `x`. The target `y` is the same
# window shifted by one, so `y[b, t]` is the character after `x[b, t]`: one window of T characters poses T
# "what comes next" questions at once.

# %%
B, T = 4, 8  # batch size, context length ("time")
rng = np.random.default_rng(1337)


def get_batch(ids: np.ndarray):
    ix = rng.integers(0, len(ids) - T - 1, size=B)
    x = np.stack([ids[i:i + T] for i in ix])  # (B, T)
    y = np.stack([ids[i + 1:i + T + 1] for i in ix])  # (B, T): x shifted by one
    return x, y


xb, yb = get_batch(train_ids)
print("x", xb.shape, " y", yb.shape)
for b in range(B):
    print(repr(tok.decode(xb[b])), "->", repr(tok.decode(yb[b])))

# %% [markdown]
# ## 2. 模型：forward 和 generate / The model: forward and generate
#
# `forward(idx)` 对 `idx` 的每一个位置给出下一个字的打分，形状 **(B, T, C)**：B 个片段、T 个位置、每个位置
# C 个分数（这里 C = 字表大小 V）。这些分数叫 **logits**：还没归一化的对数概率。**softmax** 把它们变成概率：
# 每个取 e 的幂，再除以总和，于是都是正数、加起来等于 1。对计数模型，logits 就是 ln(次数 + alpha)。
#
# 有 `targets` 时，`forward` 还返回损失：目标字的 −ln 概率的平均值，就是第 1 章的损失。
#
# `forward(idx)` scores the next character at every position of `idx`: shape **(B, T, C)**, B windows, T
# positions, C scores each (here C = the vocabulary size V). The scores are **logits**: unnormalised log
# probabilities. **softmax** turns them into probabilities: exponentiate each, divide by the sum, so they are
# positive and add up to 1. For the counting model the logits are ln(count + alpha). Given `targets`,
# `forward` also returns the loss: the mean −ln probability of the target characters, chapter 1's loss.

# %%
def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))  # minus the max: same result, no overflow
    return e / e.sum(axis=-1, keepdims=True)


class CountingBigram:
    def __init__(self, vocab_size: int, alpha: float = 0.01):
        self.V, self.alpha = vocab_size, alpha
        # a -> (the characters b seen after a, how often each): the table's non-zero part, row by row
        self.followers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, ids: np.ndarray) -> "CountingBigram":
        pairs = ids[:-1] * self.V + ids[1:]  # each neighbour pair (a, b) as one number a*V + b
        uniq, n = np.unique(pairs, return_counts=True)  # sorted, so each a's pairs are together
        a_of = uniq // self.V
        for a in np.unique(a_of):
            sel = a_of == a
            self.followers[int(a)] = (uniq[sel] % self.V, n[sel])
        return self

    def counts(self, a: int) -> np.ndarray:
        """Row a of the table: how often each character followed a, (V,)."""
        row = np.zeros(self.V)
        if a in self.followers:
            bs, cs = self.followers[a]
            row[bs] = cs
        return row

    def forward(self, idx: np.ndarray, targets: np.ndarray | None = None):
        B, T = idx.shape
        logits = np.stack([np.log(self.counts(int(a)) + self.alpha)
                           for a in idx.reshape(-1)]).reshape(B, T, self.V)  # (B, T, C)
        if targets is None:
            return logits, None
        probs = softmax(logits)  # (B, T, C)
        p_target = np.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]  # (B, T)
        return logits, float(-np.log(p_target).mean())

    def generate(self, idx: np.ndarray, max_new_tokens: int, rng) -> np.ndarray:
        for _ in range(max_new_tokens):
            logits, _ = self.forward(idx[:, -1:])  # a bigram needs only the last character
            probs = softmax(logits[:, -1, :])  # (B, C)
            nxt = np.array([rng.choice(self.V, p=p) for p in probs])  # (B,)
            idx = np.concatenate([idx, nxt[:, None]], axis=1)  # (B, T+1)
        return idx


model = CountingBigram(V).fit(train_ids)
logits, loss = model.forward(xb, yb)
print("logits", logits.shape, " loss", round(loss, 3))

# %% [markdown]
# **形状就是一切 / Shapes are everything.** 读神经网络的代码时，盯住每个张量的形状：`idx` 是 (B, T) 个编号，
# `logits` 是 (B, T, C) 个分数，`loss` 是一个数。下一章起，`C` 多半是向量的宽度 `n_embd`，到最后一层才变回 V。
#
# When you read network code, follow the shapes: `idx` is (B, T) ids, `logits` (B, T, C) scores, `loss` one
# number. From the next chapters on, `C` is mostly the vector width `n_embd`, turning into V at the last layer.

# %%
start = np.array([tok.encode("春"), tok.encode("秋")])  # (2, 1): two prompts, one character each
out = model.generate(start, 30, np.random.default_rng(1337))
for row in out:
    print(tok.decode(row).replace("\n", " / "))

# %% [markdown]
# 在整个验证集上估计损失：取很多批，平均。这是以后每章评估模型的办法（`estimate_loss`）。
# Estimate the validation loss from many batches and average: how every later chapter evaluates a model.

# %%
def estimate_loss(model, ids, iters: int = 20) -> float:
    return float(np.mean([model.forward(*get_batch(ids))[1] for _ in range(iters)]))


print(f"val loss ≈ {estimate_loss(model, val_ids):.3f} nats/char (20 batches of {B}x{T})")

# %% [markdown]
# ## 练习 / Exercise
#
# 不用 `forward`，直接用次数表 `model.counts(a)` 算出这一批 `(xb, yb)` 的损失：对每个位置，
# P(y | x) = (次数(x, y) + alpha) / (次数(x, 所有字) + alpha · V)，取 −ln 再平均。赋给 `answer`。
# 检查格拿它和 `forward` 的损失比较——两者必须相同，softmax(ln(次数 + alpha)) 正是这个比例。
#
# Without `forward`, compute the loss of the batch `(xb, yb)` straight from the table rows `model.counts(a)`:
# P(y | x) = (count(x, y) + alpha) / (count(x, anything) + alpha · V), then the mean of −ln. The check
# compares it with `forward`'s loss: softmax(ln(count + alpha)) is exactly this ratio.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    import math
    nll = []
    for a, b in zip(xb.reshape(-1), yb.reshape(-1)):
        row = model.counts(int(a))
        nll.append(-math.log((row[b] + model.alpha) / (row.sum() + model.alpha * V)))
    answer = sum(nll) / len(nll)

# %%
check("the batch's loss, from the counts", answer, model.forward(xb, yb)[1], tol=1e-9)

# %% [markdown]
# **下一章 / Next:** [第 3 章 五分钟 PyTorch / PyTorch in 5 minutes](03_pytorch.py)

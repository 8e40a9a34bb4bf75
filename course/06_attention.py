# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 6 章 自注意力：字与字第一次交流
# # Chapter 6. Self-attention: characters talk to each other
#
# **想法 / The idea.** 到现在为止，每个位置只看自己。注意力让每个字从它**前面**的字那里收集信息：每个字发出一个
# “查询” q（我在找什么），每个字亮出一个“键” k（我有什么）和一个“值” v（我给出什么）。q·k 越大，越关注那个字；
# softmax 把这些分数变成加起来为 1 的权重，再按权重把前面各字的 v 加起来。**因果遮罩**保证只看过去，不偷看未来。
#
# Until now each position saw only itself. Attention lets every character gather information from the
# characters *before* it: each emits a query q (what I look for), a key k (what I have) and a value v (what I
# give). The bigger q·k, the more attention; softmax turns the scores into weights that add up to 1, and the
# values are summed with those weights. The **causal mask** keeps it to the past.

# %%
from coursekit import *

import torch
from torch.nn import functional as F

from tianci.config import load_preset
from tianci.attention import Head, _causal_mask
from tianci.model import GPT
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
torch.manual_seed(1337)

# %% [markdown]
# ## 1. 加权平均的技巧 / The weighted-average trick
#
# 最简单的“和前面的字交流”：把自己和前面所有字的向量取平均。用循环写很慢；用一个下三角矩阵做一次矩阵乘法，结果一样；
# 再换成“分数 → 把未来设成 −∞ → softmax”，还是一样——而这时分数就可以由数据决定了，这就是注意力。
#
# The simplest way to talk to the past: average your vector with all earlier ones. A loop is slow; one matrix
# product with a lower-triangular matrix gives the same; so does "scores → set the future to −∞ → softmax".
# And then the scores can come from the data: that is attention.

# %%
B, T, C = 2, 5, 3
x = torch.randn(B, T, C)

# version 1: a loop
xbow = torch.zeros(B, T, C)
for b in range(B):
    for t in range(T):
        xbow[b, t] = x[b, :t + 1].mean(dim=0)

# version 2: a lower-triangular matrix of weights
wei = torch.tril(torch.ones(T, T))
wei = wei / wei.sum(dim=1, keepdim=True)  # each row sums to 1
xbow2 = wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)

# version 3: scores, a causal mask, softmax
scores = torch.zeros(T, T)
scores = scores.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
wei3 = F.softmax(scores, dim=-1)
xbow3 = wei3 @ x

print(wei3)
print("same result:", torch.allclose(xbow, xbow2), torch.allclose(xbow, xbow3))

# %% [markdown]
# ## 2. q·k·v：让数据决定权重 / q·k·v: weights from the data
#
# 把全 0 的分数换成 q·k：每个字用两个线性层算出 q 和 k，分数矩阵是 q @ kᵀ，除以 √(head size) 让分数不要太大
# （否则 softmax 会变得“非此即彼”）。tianci 的 `Head`（教程的写法）：
#
# Replace the zero scores by q·k: two linear layers give each character a q and a k, the score matrix is
# q @ kᵀ, divided by √(head size) so the softmax does not become all-or-nothing. tianci's `Head` (the
# tutorial's way):

# %%
show_source(Head.__init__, "self.key", "self.query", "self.value")
show_source(Head.forward, "q, k, v = ", "wei = q @ k", "masked_fill", "F.softmax", "return wei @ v")
show_source(_causal_mask)

# %% [markdown]
# ## 3. 形状 / Shapes
#
# 这一级（预设 `attention`）只有一个头，和 `n_embd` 一样宽：q、k、v 都是 (B, T, 64)，权重 `wei` 是 (B, T, T)。
# This rung (preset `attention`) has one head as wide as `n_embd`: q, k, v are (B, T, 64); `wei` is (B, T, T).

# %%
cfg = load_preset("attention").model
cfg.vocab_size = tok.vocab_size
model = GPT(cfg)
idx = torch.tensor([tok.encode("春花秋月何时了")])
trace_shapes(model, idx, depth=5)

# %% [markdown]
# ## 4. 训练，比较 / Train and compare

# %%
rows = train_rungs(["position", "attention"])
rung_table(rows)
docs_rows(["position", "attention"])

# %% [markdown]
# **损失反而升了 / The loss went up.** docs/ladder.md 里也是（Δ +0.345）。这一级还没有残差连接（第 9 章）：
# 注意力的输出**取代**了当前字的向量，模型得先学会“注意自己”才能重新知道当前是哪个字。多头（下一章）和残差会把它补回来。
#
# docs/ladder.md shows it too (Δ +0.345). There is no residual connection yet (chapter 9): attention's output
# *replaces* the current character's vector, so the model must first learn to attend to itself just to know
# which character it is on. Multi-head (next chapter) and the residual recover it.
#
# ## 5. 注意力图 / An attention map
#
# 每一行是一个“正在看”的字，每一列是被看的字；颜色越亮，权重越大。右上角全黑：那是未来，被遮住了。
# Each row is a character that looks, each column a character looked at; brighter is more weight. The upper
# right is dark: the future, masked.

# %%
from tianci.checkpoint import load_run
from tianci.measure.plot import attention_weights, plot_attention

run = load_run(rows[-1]["run_dir"])
text = "春花秋月何时了，往事知多少。"
ids = torch.tensor([tok.encode(text)])
w = attention_weights(run.model, ids, layer=0)  # (heads, T, T)
print("weights:", tuple(w.shape), " each row sums to 1:", torch.allclose(w.sum(-1), torch.ones(w.shape[:-1])))
png = plot_attention(w, list(text), RUNS / "attention-map.png", title="+self-attention, layer 0")
show_image(png)

# %% [markdown]
# ## 练习 / Exercise
#
# 自己算出上面那张图的权重：这一级没有归一化，所以进入注意力的就是 `x = wte(ids) + wpe(arange(T))`。用训练好的
# `run.model.h[0].attn.heads[0]` 的 `query` 和 `key` 算 q、k，分数 q @ kᵀ / √hs，遮住未来，softmax。把 (T, T)
# 的权重赋给 `answer`；检查格和 `attention_weights` 的结果比较（最大误差）。
#
# Compute the map's weights yourself. This rung has no normalisation, so attention's input is
# `x = wte(ids) + wpe(arange(T))`. With the trained `run.model.h[0].attn.heads[0]`'s `query` and `key`, compute
# q and k, scores q @ kᵀ / √hs, mask the future, softmax. Put the (T, T) weights in `answer`; the check compares
# them with `attention_weights` (largest difference).

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    m, Tn = run.model, ids.shape[1]
    with torch.no_grad():
        xin = m.wte(ids) + m.wpe(torch.arange(Tn))  # (1, T, C)
        head = m.h[0].attn.heads[0]
        q, k = head.query(xin), head.key(xin)  # (1, T, hs)
        s = q @ k.transpose(-2, -1) / k.shape[-1] ** 0.5  # (1, T, T)
        s = s.masked_fill(torch.tril(torch.ones(Tn, Tn)) == 0, float("-inf"))
        answer = F.softmax(s, dim=-1)[0]

# %%
check("largest difference from attention_weights", float((answer - w[0]).abs().max()), 0.0, tol=1e-5)

# %% [markdown]
# **下一章 / Next:** [第 7 章 多头 / multi-head](07_multihead.py)

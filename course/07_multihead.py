# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 7 章 多头注意力：几个窄的头并行
# # Chapter 7. Multi-head attention: several narrow heads in parallel
#
# **想法 / The idea.** 一个 64 维的头只能给每个字算**一组**权重。把它换成 4 个 16 维的头并行：每个头有自己的 q、k、v，
# 可以各找各的东西——一个头盯住当前字，一个头找上一句的同一位置，一个头看标点……最后把 4 个头的输出拼回 64 维。
# 参数量不变（4 × 16 = 64）。
#
# One 64-wide head computes **one** set of weights per character. Use four 16-wide heads instead: each has its
# own q, k, v and can look for something different (one keeps the current character, one finds the same slot
# in the previous line, one watches punctuation), and their outputs are concatenated back to 64. The same
# number of parameters (4 × 16 = 64).

# %%
from coursekit import *

import torch

from tianci.config import load_preset
from tianci.model import GPT, LoopAttention
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
torch.manual_seed(1337)

# %% [markdown]
# ## `attention.py` 里的几行 / The lines in `attention.py`
#
# 每个头的宽度是 `n_embd // n_head`（`GPTConfig.head_size`）；`LoopAttention` 运行每个 `Head`，再拼起来。
# Each head is `n_embd // n_head` wide (`GPTConfig.head_size`); `LoopAttention` runs every `Head` and
# concatenates.

# %%
from tianci.config import GPTConfig

show_source(GPTConfig.head_size.fget)
show_source(LoopAttention.__init__, "self.heads =")
show_source(LoopAttention.forward, "torch.cat", "for i, h in enumerate")

# %% [markdown]
# ## 形状 / Shapes
#
# 每个头输出 (B, T, 16)，4 个拼起来是 (B, T, 64)。/ Each head outputs (B, T, 16); four concatenated are (B, T, 64).

# %%
cfg = load_preset("multihead").model
cfg.vocab_size = tok.vocab_size
model = GPT(cfg)
print(f"n_head={cfg.n_head} head_size={cfg.head_size} n_embd={cfg.n_embd}")
trace_shapes(model, torch.tensor([tok.encode("春花秋月何时了")]), depth=5)

# %% [markdown]
# ## 训练，比较 / Train and compare

# %%
rows = train_rungs(["attention", "multihead"])
rung_table(rows)
docs_rows(["attention", "multihead"])

# %% [markdown]
# 比单头好（docs/ladder.md：Δ −0.153）：一个头可以留在当前字上，其他头去看别处。
# Better than one head (docs/ladder.md: Δ −0.153): one head can stay on the current character while the
# others look elsewhere.
#
# **每个头看什么 / What each head looks at:**

# %%
from tianci.checkpoint import load_run
from tianci.measure.plot import attention_weights, plot_attention

run = load_run(rows[-1]["run_dir"])
text = "春花秋月何时了，往事知多少。"
w = attention_weights(run.model, torch.tensor([tok.encode(text)]))  # (4, T, T)
show_image(plot_attention(w, list(text), RUNS / "multihead-map.png", title="+multi-head: 4 heads, layer 0"))

# %% [markdown]
# ## 练习 / Exercise
#
# 单头（`attention`）和多头（`multihead`）的注意力层各有多少个参数？写出公式：q、k、v 三个线性层，每个
# `n_embd` 进、一共 `n_embd` 出（没有偏置）。把多头注意力层的参数个数赋给 `answer`；检查格数一数
# `model.h[0].attn` 的参数，并确认单头的一样多。
#
# How many parameters has the attention layer of each rung? Three linear layers (q, k, v), `n_embd` in and
# `n_embd` out in total, no bias. Put the multi-head layer's count in `answer`; the check counts
# `model.h[0].attn`'s parameters and confirms the single head has as many.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    answer = 3 * cfg.n_embd * cfg.n_embd

# %%
count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
scfg = load_preset("attention").model
scfg.vocab_size = tok.vocab_size
check("parameters of the multi-head attention layer", answer, count(model.h[0].attn))
check("the single head has as many", count(GPT(scfg).h[0].attn), count(model.h[0].attn))

# %% [markdown]
# **下一章 / Next:** [第 8 章 前馈与堆叠 / feed-forward and blocks](08_blocks.py)

# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 5 章 位置：每个位置一个向量
# # Chapter 5. Position: one vector per position
#
# **想法 / The idea.** 二元模型只知道“当前是哪个字”。再给每个位置（一段里的第 0、1、2……个字）一个可以学的向量
# `wpe`，加到字向量上，模型就也知道“我在第几个位置”。单靠它还看不到别的字——要等下一章的注意力，位置才真正有用：
# 注意力需要知道“哪个字在前、离我多远”。
#
# The bigram knows only which character it is on. Give every position (0, 1, 2, … in the window) a learned
# vector `wpe` and add it to the character's vector: now the model also knows where it is. On its own this
# still sees no other character; position pays off with attention (next chapter), which needs to know which
# character came first and how far away it is.

# %%
from coursekit import *

import torch

from tianci.config import load_preset
from tianci.model import GPT
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")

# %% [markdown]
# ## `model.py` 里的几行 / The lines in `model.py`

# %%
show_source(GPT.__init__, "self.wpe =")
show_source(GPT.hidden, "x = self.wte(idx)", "self.wpe(torch.arange")

# %% [markdown]
# ## 形状 / Shapes
#
# `wte(idx)` 是 (B, T, C)，`wpe(arange(T))` 是 (T, C)；相加时 PyTorch 把 (T, C) 自动“广播”到每一段上。
# `wte(idx)` is (B, T, C) and `wpe(arange(T))` is (T, C); adding them broadcasts the (T, C) over the batch.

# %%
cfg = load_preset("position").model
cfg.vocab_size = tok.vocab_size
model = GPT(cfg)
idx = torch.tensor([tok.encode("春花秋月何时了"), tok.encode("往事知多少。\n")])  # (2, 7)
print("wte(idx):", tuple(model.wte(idx).shape), "  wpe(arange(T)):", tuple(model.wpe(torch.arange(7)).shape))
trace_shapes(model, idx)

# %% [markdown]
# ## 训练两级，比较 / Train both rungs and compare
#
# 同样的数据、同样多的 token、同样的种子（`tianci ladder --token-budget` 的做法）。
# The same data, the same number of tokens, the same seed (what `tianci ladder --token-budget` does).

# %%
rows = train_rungs(["bigram", "position"])
rung_table(rows)
docs_rows(["bigram", "position"])

# %% [markdown]
# **几乎一样 / Almost no change.** 训练片段是从语料里随机位置切下来的 32 个字，“片段里的第几个字”和词里的句子位置
# 没什么关系；而且没有注意力，模型也没法用位置去找别的字。docs/ladder.md 里同样如此（Δ −0.007）。
#
# Training windows are 32 characters cut at random places, so "position in the window" says little about the
# verse, and without attention the model cannot use it to reach other characters. docs/ladder.md shows the
# same (Δ −0.007).

# %% [markdown]
# ## 练习 / Exercise
#
# 加上位置嵌入多了多少个参数？用 `cfg.block_size` 和 `cfg.n_embd` 算出来，赋给 `answer`。检查格会数两个模型的
# 全部参数，相减。
#
# How many parameters does the position embedding add? Compute it from `cfg.block_size` and `cfg.n_embd` into
# `answer`. The check counts every parameter of both models and subtracts.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    answer = cfg.block_size * cfg.n_embd

# %%
bcfg = load_preset("bigram").model
bcfg.vocab_size = tok.vocab_size
count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
check("parameters added by wpe", answer, count(model) - count(GPT(bcfg)))

# %% [markdown]
# **下一章 / Next:** [第 6 章 自注意力 / self-attention](06_attention.py)

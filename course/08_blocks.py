# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 8 章 前馈层与堆叠：先交流，再思考；再叠三层
# # Chapter 8. Feed-forward and blocks: communicate, then think; then stack three
#
# **想法 / The idea.** 注意力负责**收集**信息（字与字交流），但收集来的东西还要**消化**：前馈层（MLP）让每个位置
# 各自通过一个小网络（线性层 + ReLU）。注意力 + 前馈 = 一个**块（block）**。把块叠起来（`n_layer = 3`），网络更深、
# 表达力更强——但你会看到，没有下一章的残差连接，深网络很难训练。
#
# Attention **gathers** information (characters talk); what it gathered still has to be **digested**: the
# feed-forward layer (MLP) passes each position through a small network (linear + ReLU) on its own. Attention
# plus MLP is one **block**. Stacking blocks (`n_layer = 3`) makes the network deeper and more expressive;
# but, as you will see, without the next chapter's residual connections a deep stack is hard to train.

# %%
from coursekit import *

import torch

from tianci.config import load_preset
from tianci.model import GPT, MLP, Block
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
torch.manual_seed(1337)

# %% [markdown]
# ## `model.py` 里的几行 / The lines in `model.py`
#
# 这一级还没有投影（`proj=False`），所以 MLP 就是教程的 `Linear(C, C)` + ReLU；`Block` 先注意力、后 MLP。
# No projections yet (`proj=False`), so the MLP is the tutorial's `Linear(C, C)` + ReLU; a `Block` runs
# attention, then the MLP.

# %%
show_source(MLP.__init__, "hidden =", "self.c_fc =")
show_source(MLP.forward, "h = self.c_fc(x)", 'if self.act == "relu"', "h = F.relu(h)")
show_source(Block.forward)
show_source(GPT.__init__, "self.h = nn.ModuleList")

# %% [markdown]
# ## 形状 / Shapes
#
# 三层块，每层进出都是 (B, T, C)：所以块可以随便叠。/ Three blocks, each (B, T, C) in and out: that is why
# blocks stack.

# %%
cfg = load_preset("blocks").model
cfg.vocab_size = tok.vocab_size
model = GPT(cfg)
trace_shapes(model, torch.tensor([tok.encode("春花秋月何时了")]), depth=3)

# %% [markdown]
# ## 训练，比较 / Train and compare

# %%
rows = train_rungs(["multihead", "feedforward", "blocks"])
rung_table(rows)
docs_rows(["multihead", "feedforward", "blocks"])

# %% [markdown]
# **曲线 / The curves.** `tianci.measure.plot.plot_runs` 画出每一级的训练（细线）和验证（粗线）损失。
# `plot_runs` draws each rung's train (thin) and validation (thick) loss.

# %%
from tianci.measure.plot import plot_runs

png = plot_runs([r["run_dir"] for r in rows], RUNS / "blocks-curves.png", labels=[r["rung"] for r in rows],
                title="multihead -> feedforward -> blocks")
show_image(png)

# %% [markdown]
# **更深反而更差 / Deeper is worse.** docs/ladder.md 里 +blocks 是最差的一级（Δ +0.514）：没有残差、没有归一化，
# 梯度要穿过每一层的非线性才能到达底层，三层叠起来反而更难训练。下一章的残差连接正是为此而来。
#
# In docs/ladder.md +blocks is the worst rung (Δ +0.514): with no residual path and no normalisation the
# gradient has to cross every layer's non-linearity to reach the bottom, so three stacked blocks train worse.
# The next chapter's residual connection exists to fix exactly this.

# %% [markdown]
# ## 练习 / Exercise
#
# 一个块有多少个参数？注意力：q、k、v 三个 `C × C` 的矩阵（没有偏置）；MLP：一个 `Linear(C, C)`，有偏置。
# 用 `cfg.n_embd` 写出公式，赋给 `answer`；检查格数一数 `model.h[1]` 的参数。
#
# How many parameters has one block? Attention: three `C × C` matrices (no bias); MLP: one `Linear(C, C)` with a
# bias. Write the formula with `cfg.n_embd` into `answer`; the check counts `model.h[1]`'s parameters.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    C = cfg.n_embd
    answer = 3 * C * C + (C * C + C)

# %%
check("parameters of one block", answer, sum(p.numel() for p in model.h[1].parameters()))

# %% [markdown]
# **下一章 / Next:** [第 9 章 残差、投影、LayerNorm、dropout / residual, projection, LayerNorm, dropout](09_residual_norm.py)

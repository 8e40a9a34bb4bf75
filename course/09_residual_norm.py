# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 9 章 残差、投影、LayerNorm、dropout：让深网络训练得动
# # Chapter 9. Residual, projection, LayerNorm, dropout: making the deep stack train
#
# 四个小改动，每个一级。/ Four small changes, one rung each:
#
# - **残差 residual** — 每一层不再**替换** x，而是在 x 上**加**一点修改：`x = x + f(x)`。梯度可以沿着加法直接流到
#   底层，深网络因此可以训练。/ Each layer *adds* a correction to x instead of replacing it; the gradient flows
#   straight down the additions, so the deep stack trains.
# - **投影 projection** — 各个头拼起来之后再过一个线性层 `c_proj` 混合；MLP 先放宽 4 倍再投影回来（GPT-2）。
#   / A linear layer `c_proj` mixes the concatenated heads; the MLP widens 4x and projects back (GPT-2).
# - **LayerNorm** — 每个子层之前把每个向量归一化（均值 0、方差 1，再乘一个学出来的系数），最后输出前再来一次
#   （`ln_f`）。数值尺度稳定，训练更稳。/ Normalise each vector (mean 0, variance 1, times a learned gain) before
#   every sub-layer and once more before the output (`ln_f`): stable scales, steadier training.
# - **dropout** — 训练时随机把 10% 的数值置零，逼模型不依赖任何单个特征，对抗过拟合；评估和采样时关掉。
#   / During training, zero 10% of the values at random so the model cannot lean on any one feature (fights
#   overfitting); off when evaluating and sampling.

# %%
from coursekit import *

import torch
import torch.nn as nn

from tianci.config import load_preset
from tianci.model import GPT, MLP, Block, Head, LoopAttention, _norm
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
torch.manual_seed(1337)

# %% [markdown]
# ## `model.py` 与 `attention.py` 里的几行 / The lines in `model.py` and `attention.py`

# %%
print("--- residual")
show_source(Block.forward, "x = x + a if self.residual", "x = x + m if self.residual")
print("--- projection")
show_source(LoopAttention.__init__, "self.c_proj =")
show_source(MLP.__init__, "hidden = cfg.mlp_ratio")
print("--- LayerNorm")
show_source(_norm, 'if cfg.norm == "layernorm"', "nn.LayerNorm")
show_source(Block.forward, "self.ln_1(x)", "self.ln_2(x)")
print("--- dropout")
show_source(Head.forward, "self.dropout(F.softmax")

# %% [markdown]
# ## 形状 / Shapes
#
# 最后一级（`dropout`）：每个块里 ln_1 → attn（4 个头 + c_proj）→ 加回 x → ln_2 → MLP（64 → 256 → 64）→ 加回 x。
# The last rung (`dropout`): in each block ln_1 → attn (4 heads + c_proj) → add to x → ln_2 → MLP (64 → 256 →
# 64) → add to x.

# %%
cfg = load_preset("dropout").model
cfg.vocab_size = tok.vocab_size
model = GPT(cfg).eval()
trace_shapes(model, torch.tensor([tok.encode("春花秋月何时了")]), depth=4)

# %% [markdown]
# ## 训练，比较 / Train and compare
#
# 从上一章的 `blocks` 出发，一次加一个开关（上一章训练过的级直接复用）。
# From the last chapter's `blocks`, one switch at a time (rungs already trained are reused).

# %%
names = ["blocks", "residual", "projection", "layernorm", "dropout"]
rows = train_rungs(names)
rung_table(rows)
docs_rows(names)

# %%
from tianci.measure.plot import plot_ladder, plot_runs

show_image(plot_ladder(rows, RUNS / "residual-ladder.png", title="blocks -> +residual -> +projection -> "
                       "+layernorm -> +dropout (same tokens)"))
show_image(plot_runs([r["run_dir"] for r in rows], RUNS / "residual-curves.png", labels=[r["rung"] for r in rows]))

# %% [markdown]
# **怎么读 / How to read it.** 残差是梯子上最大的一步（docs/ladder.md：−1.0 nats/char）：同样的三层，只是把 `a`
# 换成了 `x + a`。之后几级在这么短的训练里看不出好处，甚至略差：投影让每一步更慢、参数更多，要更长的训练才收得回；
# LayerNorm 的好处是稳定（没有归一化时，+residual 的训练损失在开头会冲出一个尖峰，见 docs/ladder.md 的曲线）；dropout
# 防的是过拟合，而几十秒的模型离过拟合还远（训练损失还不比验证损失低）。这些零件在更大、训练更久的模型里才显出价值——
# 第 12 章的 `ci-cpu`。
#
# The residual is the biggest step of the ladder (docs/ladder.md: −1.0 nats/char): the same three layers,
# with `a` changed to `x + a`. The later rungs show no gain in training this short, even a small loss: the
# projections make each step slower and add parameters, paid back only by longer training; LayerNorm buys
# stability (without it, +residual's train loss spikes early on: see the curves in docs/ladder.md); dropout
# fights overfitting, and a model trained for seconds is far from overfitting (its train loss is not below
# its val loss yet). These parts pay off in larger, longer-trained models: chapter 12's `ci-cpu`.

# %% [markdown]
# ## 练习 / Exercise
#
# 自己写 LayerNorm：对一个向量 x，(x − 均值) / √(方差 + eps) × weight + bias（方差用除以 n 的那种，
# `unbiased=False`）。用训练好的 `layernorm` 级的 `ln_f`（它的 `weight`、`bias`、`eps`）作用在下面的 `x` 上，
# 结果赋给 `answer`；检查格和 `ln_f(x)` 比较（最大误差）。
#
# Write LayerNorm yourself: for a vector x, (x − mean) / √(variance + eps) × weight + bias (the variance that
# divides by n, `unbiased=False`). Apply the trained `layernorm` rung's `ln_f` (its `weight`, `bias`, `eps`) to
# the `x` below, into `answer`; the check compares with `ln_f(x)` (largest difference).

# %%
from tianci.checkpoint import load_run

ln_f = load_run(rows[names.index("layernorm")]["run_dir"]).model.ln_f
assert isinstance(ln_f, nn.LayerNorm)
x = torch.randn(5, cfg.n_embd)  # five vectors
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    with torch.no_grad():
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        answer = (x - mean) / torch.sqrt(var + ln_f.eps) * ln_f.weight + ln_f.bias

# %%
with torch.no_grad():
    check("largest difference from nn.LayerNorm", float((answer - ln_f(x)).abs().max()), 0.0, tol=1e-5)

# %% [markdown]
# **下一章 / Next:** [第 10 章 采样 / sampling](10_sampling.py)

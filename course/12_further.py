# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 12 章 更进一步：ci-cpu 的现代选项、tianci bench、torchrun
# # Chapter 12. Going further: ci-cpu's modern options, tianci bench, torchrun
#
# 梯子到第 9 章就是教程的 GPT。之后几年，人们找到了一些让同样大小的模型学得更快的改动。`ci-cpu` 预设是在这个语料、
# 2 核 CPU、10 分钟预算下逐个 A/B 测出来的组合。本章看它改了什么、学习率的时间表、怎么量速度（`tianci bench`），
# 以及怎么用几个进程一起训练（`torchrun`）。
#
# By chapter 9 the ladder is the tutorial's GPT. In the years since, people found changes that make a model of
# the same size learn faster. The `ci-cpu` preset is the combination A/B-tested one by one on this corpus, on a
# 2-core CPU, for a 10-minute budget. This chapter looks at what it changes, the learning-rate schedule, how to
# measure speed (`tianci bench`) and how to train with several processes (`torchrun`).

# %%
from coursekit import *

import dataclasses
import math

import torch

from tianci.config import load_preset

data = data_dir()

# %% [markdown]
# ## 1. ci-cpu 和经典 nanoGPT 的区别 / ci-cpu against the classic nanoGPT
#
# 两个预设形状一样（4 层、4 头、128 宽、上下文 64），区别在开关上，外加 ci-cpu 一步看两倍的字（batch 24）：
# The two presets have the same shape (4 layers, 4 heads, 128 wide, context 64); the differences are switches,
# and ci-cpu's step sees twice the text (batch 24):

# %%
classic, modern = load_preset("nanogpt-cpu"), load_preset("ci-cpu")
print(f"{'field':<16} {'nanogpt-cpu':>12} {'ci-cpu':>10}")
for sec in ("model", "train"):
    for f in dataclasses.fields(getattr(classic, sec)):
        a, b = getattr(getattr(classic, sec), f.name), getattr(getattr(modern, sec), f.name)
        if a != b and f.name not in ("max_iters", "max_time", "lr_decay_iters", "dtype", "fused_loss"):
            print(f"{f.name:<16} {a!s:>12} {b!s:>10}")

# %% [markdown]
# - **RoPE**（`pos="rope"`）：不加位置向量，把 q 和 k 按位置旋转，q·k 只取决于两个字的距离。/ rotate q and k by
#   position instead of adding a position vector: q·k depends only on the distance.
# - **RMSNorm**：比 LayerNorm 简单，只除以均方根。/ simpler than LayerNorm: divide by the root mean square.
# - **ReLU²**（`mlp_act="relu2"`）：ReLU 再平方。/ ReLU, squared.
# - **共享嵌入**（`tie_embeddings`）：`lm_head` 和 `wte` 用同一个矩阵。/ `lm_head` and `wte` share one matrix.
# - **零初始化投影**（`zero_init_proj`）：每个块一开始是恒等映射。/ each block starts as the identity.
# - 没有偏置、更大的学习率 3e-3、`beta2=0.99`。/ no biases, a larger learning rate, `beta2=0.99`.
# - batch 24：10 分钟里比 batch 12 学得更好（整个验证集 3.986 对 4.005，预设文件里有对比）。/ batch 24: better
#   than 12 over 10 minutes (3.986 vs 4.005 on the whole val split; the comparison is in the preset file).

# %%
from tianci.attention import _qk_prepare, _rope
from tianci.model import GPT, MLP, _norm
from tianci.ops import relu2

show_source(_rope)
show_source(_qk_prepare, 'if cfg.pos == "rope"', "_rope(q, pos0)")
show_source(_norm, "RMSNorm(cfg.n_embd)")  # tianci.ops.RMSNorm: nn.RMSNorm, its training backward written by hand
show_source(MLP.forward, 'elif self.act == "relu2"', "relu2(h)")
show_source(relu2, "F.relu(h).square()")
show_source(GPT.__init__, "if cfg.tie_embeddings", "self.lm_head.weight = self.wte.weight",
            "if cfg.zero_init_proj", "nn.init.zeros_(p)")

# %% [markdown]
# **RoPE 只看距离 / RoPE sees only the distance.** 把同一对 q、k 一起往后挪 5 个位置，点积不变：
# Move the same q and k five positions further together, and their dot product stays the same:

# %%
torch.manual_seed(0)
q, k = torch.randn(1, 1, 32), torch.randn(1, 1, 32)  # one head-size-32 vector each
dot = lambda i, j: (_rope(q, i) * _rope(k, j)).sum().item()  # noqa: E731  q at position i, k at j
print(f"q at 7, k at 3: {dot(7, 3):.5f}   q at 12, k at 8: {dot(12, 8):.5f}   q at 7, k at 6: {dot(7, 6):.5f}")

# %% [markdown]
# ## 2. 学习率的时间表：预热 + 余弦 / The schedule: warm-up, then a cosine
#
# 一开始参数是随机的，梯度又大又乱，大步走会走飞：所以先**预热**，学习率从 0 慢慢升到最大。之后按半个余弦周期平滑地降到
# `min_lr`：先大步走得快，最后小步收得稳。用时间预算训练时（`--max-time`），余弦跟着时钟走。
#
# At the start the parameters are random and the gradients large and noisy; big steps would fly off, so
# **warm up**: the learning rate rises from 0 to its peak. Then it falls along half a cosine to `min_lr`: big
# fast steps first, small careful ones at the end. With a time budget (`--max-time`) the cosine follows the clock.

# %%
from tianci.optim import lr_multiplier

show_source(lr_multiplier)
tc = dataclasses.replace(modern.train, max_iters=2000, lr_decay_iters=2000, max_time=0.0)
lrs = [tc.learning_rate * lr_multiplier(s, tc) for s in range(tc.max_iters)]
print(f"step 0: {lrs[0]:.2e}  step {tc.warmup_iters}: {lrs[tc.warmup_iters]:.2e}  "
      f"step 1000: {lrs[1000]:.2e}  step 1999: {lrs[-1]:.2e}")

from tianci.measure.plot import pyplot  # noqa: E402

plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(lrs)
ax.set_xlabel("step")
ax.set_ylabel("learning rate")
ax.set_title("ci-cpu: warm-up then cosine (2,000 steps)")
fig.tight_layout()
fig.savefig(RUNS / "lr-schedule.png", dpi=90)
plt.close(fig)
show_image(RUNS / "lr-schedule.png")

# %% [markdown]
# ## 3. 训练 ci-cpu，和第 9 章比 / Train ci-cpu and compare with chapter 9
#
# 同样多的 token。ci-cpu 每一步更慢（参数是小网络的两倍、上下文两倍），所以同样的 token 要更久；它是为 10 分钟设计的。
# The same number of tokens. Each ci-cpu step is slower (twice the parameters and context of the small nets), so
# the same tokens take longer; it is built for 10 minutes.

# %%
rows = train_rungs(["residual", "ci-cpu"])
rung_table(rows)
d = docs_ladder_row("ci-cpu")
print(f"docs/ladder.md, 60 s: ci-cpu val {d['val nats/char (bits)']}; 10 minutes: 4.241 nats/char (docs/ladder.md)")

# %% [markdown]
# 想要 10 分钟的完整结果 / For the full 10-minute result:
#
# ```bash
# tianci train --preset ci-cpu --data data/ci --out runs/ci --max-time 600
# tianci compose --run runs/ci --cipai 浣溪沙
# ```
#
# ## 4. 量速度：tianci bench / Measuring speed: tianci bench
#
# `tianci bench` 在这台机器上量训练的每秒 token 数和 MFU（用到了矩阵乘峰值的百分之几），以及解码速度（重算、KV cache、
# int8）。这里只跑很短的一轮，解码用小一点的 `nanogpt-cpu` 形状（默认是 `ci-gpu`）；完整的数字和解释见 docs/speed.md。数字取决于机器，也取决于机器当时忙不忙。
#
# `tianci bench` measures training tokens per second and MFU (the fraction of the machine's matmul peak used) on
# this machine, and decoding speed (recompute, KV cache, int8). Here a very short round, decoding at the smaller `nanogpt-cpu` shape (the default is `ci-gpu`); full figures and what
# they mean are in docs/speed.md. The numbers depend on the machine and on how busy it is.

# %%
# (short mode: one training step of one variant, no decoding)
tianci_cli("bench", "--steps", budget(5, 1), "--rounds", 1, "--variants", budget("fast,classic", "fast"),
           "--decode-preset", "nanogpt-cpu", "--decode-tokens", budget(64, 0), "--peak-size", 512, "--quiet")

# %% [markdown]
# ## 5. 几个进程一起训练：torchrun / Several processes: torchrun
#
# **DDP（分布式数据并行）**：N 个进程各拿一份模型，各读不同的数据，每一步把梯度平均，于是每一步看 N 倍的数据。
# `torchrun` 负责启动这些进程、告诉每个进程它是第几个（`RANK`、`WORLD_SIZE`）；`tianci train` 自己认出来。在有 GPU 的
# 机器上每个进程用一块 GPU（nccl）；这里在 CPU 上用 2 个进程（gloo）跑几步演示。
#
# **DDP (distributed data parallel)**: N processes each hold the model, read different data and average their
# gradients every step, so each step sees N times the data. `torchrun` starts the processes and tells each its
# rank (`RANK`, `WORLD_SIZE`); `tianci train` picks that up. On a GPU machine each process drives one GPU (nccl);
# here 2 CPU processes (gloo) run a few steps (the output's last lines shown).

# %%
out = tianci_cli("train", "--preset", "bigram", "--data", data, "--out", RUNS / "ddp", "--force",
                 "--max-iters", budget(40, 6), "--eval-interval", budget(20, 3), "--eval-iters", 2,
                 "--device", "cpu", "--no-progress", torchrun=2, tail=8)

# %% [markdown]
# GPU 上 / On GPUs: `torchrun --standalone --nproc_per_node=8 -m tianci train --preset ci-gpu --data data/ci --out runs/gpu`.
#
# ## 练习 / Exercise
#
# 用公式手算 `tc` 在第 1000 步的学习率：预热之后，进度 p = (step − warmup) / (lr_decay_iters − warmup)，
# lr = min_lr + (learning_rate − min_lr) · ½ · (1 + cos(π p))。赋给 `answer`；检查格和 `lr_multiplier` 比较。
#
# Compute `tc`'s learning rate at step 1000 by hand: after the warm-up, progress
# p = (step − warmup) / (lr_decay_iters − warmup), and lr = min_lr + (learning_rate − min_lr) · ½ · (1 + cos(π p)).
# Into `answer`; the check compares with `lr_multiplier`.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    p = (1000 - tc.warmup_iters) / (tc.lr_decay_iters - tc.warmup_iters)
    answer = tc.min_lr + (tc.learning_rate - tc.min_lr) * 0.5 * (1 + math.cos(math.pi * p))

# %%
check("learning rate at step 1000", answer, tc.learning_rate * lr_multiplier(1000, tc), tol=1e-12)

# %% [markdown]
# **完 / The end.** 从数数到填词，走完了。接下来：[docs/ladder.md](../docs/ladder.md)（整个梯子的测量）、
# docs/speed.md（速度）、docs/compose.md（填词的细节）、docs/own-text.md（用你自己的文本训练）。
#
# From counting to composing: done. Next: docs/ladder.md (the whole ladder, measured), docs/speed.md (speed),
# docs/compose.md (composing in detail), docs/own-text.md (train on your own text).

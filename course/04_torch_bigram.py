# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 4 章 PyTorch 的二元模型：嵌入、lm_head、交叉熵
# # Chapter 4. The torch bigram: embedding, lm_head, cross-entropy
#
# 把第 2 章的计数表换成可以学的参数（教程的 `babygpt_v1`）：每个字查一个 64 维的向量（**嵌入 / embedding**，
# `wte`），一个线性层（`lm_head`）把这个向量变成 6,104 个 logits。和计数模型一样只看前一个字，但表是**学**出来的，
# 不是数出来的。这正是 tianci 的 `GPT` 把所有开关都关掉时的样子——梯子的第一级 `bigram`。
#
# Replace chapter 2's count table with learned parameters (the tutorial's `babygpt_v1`): each character looks
# up a 64-number vector (an **embedding**, `wte`), and a linear layer (`lm_head`) turns that vector into 6,104
# logits. Like the counting model it sees one character, but the table is *learned*, not counted. It is tianci's
# `GPT` with every switch off: the first rung of the ladder, `bigram`.

# %%
from coursekit import *

import math

import numpy as np
import torch
from torch.nn import functional as F

from tianci.config import load_preset
from tianci.model import GPT
from tianci.tokenizer import load_tokenizer

data = data_dir()
tok = load_tokenizer(data / "tokenizer.json")
V = tok.vocab_size
torch.manual_seed(1337)
torch.set_num_threads(1)  # a tiny model: one thread is as fast

# %% [markdown]
# ## 1. 模型 / The model
#
# 预设 `bigram`（`src/tianci/presets/bigram.toml`）把梯子的开关都关掉：没有位置、没有注意力、没有前馈层。
# The `bigram` preset turns every ladder switch off: no position, no attention, no feed-forward.

# %%
preset = load_preset("bigram")
cfg = preset.model
cfg.vocab_size = V
print(f"n_embd={cfg.n_embd} block_size={cfg.block_size} pos={cfg.pos!r} attn={cfg.attn!r} mlp={cfg.mlp}")
model = GPT(cfg)
print(model)
print(f"parameters: {model.num_params():,}  (= 2 x {V} x {cfg.n_embd})")

# %% [markdown]
# tianci 的 `model.py` 里管这一级的几行（直接从库里打印出来，所以永远和代码一致）：
# The lines of tianci's `model.py` behind this rung, printed from the library itself so they never go stale:

# %%
show_source(GPT.__init__, "self.wte =", "self.lm_head =")
show_source(GPT.hidden, "x = self.wte(idx)", "return self.ln_f(x)")
show_source(GPT.forward, "logits = self.logits(x)", "F.cross_entropy")

# %% [markdown]
# ## 2. 形状 / Shapes
#
# `idx` (B, T) → `wte` 查表 → (B, T, C=64) → `lm_head` → logits (B, T, V=6104)。
# 这一级 `ln_f` 是空的（Identity），后面的章节才会加上注意力块 `h`。

# %%
B, T = 16, cfg.block_size
train_ids = np.fromfile(data / "train.bin", dtype=np.uint16)
val_ids = np.fromfile(data / "val.bin", dtype=np.uint16)
gen = torch.Generator().manual_seed(1337)


def get_batch(ids):
    ix = torch.randint(len(ids) - T - 1, (B,), generator=gen)
    x = torch.stack([torch.from_numpy(ids[i:i + T].astype(np.int64)) for i in ix.tolist()])  # (B, T)
    y = torch.stack([torch.from_numpy(ids[i + 1:i + T + 1].astype(np.int64)) for i in ix.tolist()])
    return x, y


xb, yb = get_batch(train_ids)
trace_shapes(model, xb)

# %% [markdown]
# ## 3. 为什么一开始的损失 ≈ ln 6104 / Why the loss at the start is ≈ ln 6104
#
# 参数一开始是很小的随机数（标准差 0.02），所以每个 logit 都几乎是 0，softmax 之后每个字的概率都几乎是 1/6104：
# 模型在均匀地乱猜。乱猜的损失是 −ln(1/6104) = ln 6104 ≈ 8.717 nats。如果一开始的损失远高于它，说明初始化有问题。
#
# The parameters start as small random numbers (standard deviation 0.02), so every logit is almost 0 and after
# softmax every character has probability almost 1/6104: the model guesses uniformly. That costs
# −ln(1/6104) = ln 6104 ≈ 8.717 nats. A start far above it would mean a broken initialisation.

# %%
logits, loss = model(xb, yb)
print(f"loss at init {loss.item():.4f}   ln V = {math.log(V):.4f}   logits std {logits.std().item():.4f}")

# %% [markdown]
# **交叉熵（cross-entropy）** 就是第 1 章的损失：softmax 之后，正确答案那个字的 −ln 概率，取平均。
# `F.cross_entropy` 一步做完（而且数值上更稳）。/ **Cross-entropy** is chapter 1's loss: after softmax, the
# mean −ln probability of the right character. `F.cross_entropy` does it in one (numerically safer) step.

# %% [markdown]
# ## 4. 自己写训练循环 / Write the training loop yourself
#
# 和第 3 章一样的四行，再加上每隔一段时间在验证集上估计一次损失（`model.eval()` + `torch.no_grad()`：
# 评估时不要梯度）。优化器用 AdamW，学习率 0.01（和预设一样）。
#
# The same four lines as chapter 3, plus a validation estimate now and then (`model.eval()` and
# `torch.no_grad()`: no gradients when only measuring). AdamW with the preset's learning rate, 0.01.

# %%
@torch.no_grad()
def estimate_loss(model, iters=20):
    model.eval()
    out = {}
    for name, ids in (("train", train_ids), ("val", val_ids)):
        out[name] = sum(model(*get_batch(ids))[1].item() for _ in range(iters)) / iters
    model.train()
    return out


steps = budget(400, 30)
opt = torch.optim.AdamW(model.parameters(), lr=preset.train.learning_rate, weight_decay=0.1)
with Timer() as t:
    for step in range(steps + 1):
        if step % max(1, steps // 4) == 0:
            ev = estimate_loss(model)
            print(f"step {step:>4}: train {ev['train']:.3f}  val {ev['val']:.3f} nats/char")
        xb, yb = get_batch(train_ids)
        _, loss = model(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
print(f"{steps} steps in {t.seconds:.1f}s")

# %% [markdown]
# ## 5. 采样 / Sampling
#
# `tianci.generate.complete` 是 tianci 唯一的采样函数（命令行、服务器、填词都用它）：一次算出下一个字的
# logits，softmax，掷骰子，接上，再来。第 10 章细讲。
#
# `tianci.generate.complete` is tianci's one sampler (the CLI, the server and the composer all use it):
# logits of the next character, softmax, roll the dice, append, repeat. Chapter 10 has the details.

# %%
from tianci.generate import SampleOptions, complete

for c in complete(model, tok, "春", n=2, opts=SampleOptions(max_new_tokens=40, seed=1337)):
    print("春" + c.text.replace("\n", " / "))

# %% [markdown]
# ## 6. 同一级，用 tianci 来训练 / The same rung, trained by tianci
#
# 你刚写的循环就是 `tianci train` 的核心；库里多了学习率的预热和余弦衰减（第 12 章）、梯度裁剪、检查点和日志。
# `train_rungs` 用 `tianci ladder` 的办法训练一级：同样的数据、同样多的 token、同样的种子，再用“春”采 40 个字。
# 下面几章都用它来比较梯子的相邻两级。
#
# The loop you just wrote is the heart of `tianci train`; the library adds a learning-rate warm-up and cosine
# decay (chapter 12), gradient clipping, checkpoints and logs. `train_rungs` trains a rung the way
# `tianci ladder` does: same data, same number of tokens, same seed, then 40 characters from 春. The next
# chapters use it to compare neighbouring rungs.

# %%
rows = train_rungs(["bigram"])
rung_table(rows)
doc = docs_ladder_row("bigram")
print(f"docs/ladder.md (60 s per rung, {doc['tokens seen']} tokens): val {doc['val nats/char (bits)']}")

# %% [markdown]
# 同样只看一个字，计数模型是 4.74：学出来的二元模型**可以**追上它，但需要读更多的 token。
# With the same one-character context the counting model reaches 4.74: the learned bigram *can* catch up,
# given many more tokens.
#
# ## 练习 / Exercise
#
# 不用 `F.cross_entropy`，自己从 logits 算出这一批的交叉熵：`log_softmax`（或 softmax 再取 ln），取出每个位置
# 正确字那一项，取负、平均。赋给 `answer`；检查格和 `model(xb, yb)` 返回的损失比较。
#
# Without `F.cross_entropy`, compute the batch's cross-entropy from the logits yourself: `log_softmax` (or
# softmax then ln), pick the right character's entry at every position, negate, average. The check compares it
# with the loss `model(xb, yb)` returns.

# %%
xb, yb = get_batch(val_ids)
model.eval()
with torch.no_grad():
    logits, loss = model(xb, yb)  # logits (B, T, V)
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    logp = logits - logits.exp().sum(dim=-1, keepdim=True).log()  # log softmax, written out
    answer = -logp.gather(-1, yb[..., None]).mean().item()

# %%
check("cross-entropy by hand", answer, loss.item(), tol=1e-4)
assert abs(estimate_loss(model)["val"]) < math.log(V), "training should have beaten uniform guessing"

# %% [markdown]
# **下一章 / Next:** [第 5 章 位置 / position](05_position.py)

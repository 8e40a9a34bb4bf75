# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 10 章 采样：温度、top-k / top-p、KV cache
# # Chapter 10. Sampling: temperature, top-k / top-p, the KV cache
#
# 训练好的模型对每个位置给出下一个字的 logits。怎么从 logits 写出一首词？一次一个字：算出概率，掷骰子，接上，再来。
# 本章看三个旋钮——**温度**、**top-k**、**top-p**——和一个让它快很多的技巧：**KV cache**。tianci 只有一个采样函数
# `tianci.generate.generate`，命令行、服务器、填词都用它。
#
# A trained model gives next-character logits at every position. To write a poem: one character at a time,
# probabilities, dice, append, repeat. This chapter turns three knobs (**temperature**, **top-k**, **top-p**)
# and measures one trick that makes it much faster: the **KV cache**. tianci has one sampler,
# `tianci.generate.generate`, that the CLI, the server and the composer share.

# %%
from coursekit import *

import os

import torch
from torch.nn import functional as F

from tianci.checkpoint import load_run
from tianci.generate import SampleOptions, complete, filter_logits, generate

data = data_dir()
torch.set_num_threads(1)
rows = train_rungs(["residual"])  # the best small rung of chapter 9 (reused if chapter 9 trained it)
run = load_run(rows[0]["run_dir"])
model, tok = run.model, run.tokenizer

# %% [markdown]
# ## 1. 温度 / Temperature
#
# 采样前把 logits 除以温度 τ。τ < 1：大的更大、小的更小，分布更“尖”，写得更保守、更重复；τ > 1：分布更平，更冒险、
# 更乱；τ → 0 就是每次挑概率最大的字（**贪心 / greedy**）。**熵（entropy）**衡量分布有多平：单位 bits，就是
# “相当于在 2^熵 个字里平均地挑”。
#
# Divide the logits by a temperature τ before sampling. τ < 1 sharpens the distribution (safer, more
# repetitive), τ > 1 flattens it (bolder, noisier), τ → 0 always takes the top character (**greedy**). The
# **entropy** measures how flat a distribution is: in bits, "like choosing uniformly among 2^entropy
# characters".

# %%
show_source(filter_logits)

# %%
idx = torch.tensor([tok.encode("\n\n浣溪沙 晏殊\n春")])
with torch.no_grad():
    logits = model(idx)[0][0, -1]  # (V,): the next character after 春
for tau in (0.5, 0.8, 1.0, 1.5):
    p = F.softmax(logits / tau, dim=-1)
    ent = -(p * p.clamp_min(1e-30).log2()).sum().item()
    top = "".join(tok.decode([i]) for i in p.topk(8).indices.tolist())
    print(f"τ={tau:<4} entropy {ent:5.2f} bits  top-8: {top}  p(top)={p.max().item():.3f}")

# %%
for tau in (0.5, 1.0, 1.5):
    c = complete(model, tok, "春", 1, SampleOptions(max_new_tokens=40, temperature=tau, seed=1337))[0]
    print(f"τ={tau}: 春" + c.text.replace("\n", " / "))

# %% [markdown]
# ## 2. top-k 和 top-p / top-k and top-p
#
# 温度还会给那几千个“几乎不可能”的字留一点点概率，加起来就常常抽到怪字。**top-k** 只在最可能的 k 个字里抽；
# **top-p**（nucleus）只在“累计概率刚好达到 p”的那几个最可能的字里抽——分布尖时只剩几个，分布平时留得多。
#
# Temperature still leaves a sliver of probability on thousands of unlikely characters, and together they are
# often drawn. **top-k** draws only among the k most likely; **top-p** (nucleus) only among the most likely
# characters that together reach probability p: few when the distribution is sharp, more when it is flat.

# %%
for kw in ({"top_k": 10}, {"top_k": 50}, {"top_p": 0.5}, {"top_p": 0.9}):
    kept = torch.isfinite(filter_logits(logits[None], 1.0, **kw)).sum().item()
    print(f"{kw}: keeps {kept} of {tok.vocab_size} characters")

# %% [markdown]
# ## 3. KV cache：快多少？/ The KV cache: how much faster?
#
# 不用缓存时，每写一个字都要把整段上下文重新算一遍（教程就是这样写的）。但前面那些字的 k 和 v 不会变：把它们存起来，
# 每一步只为新写的那个字算一次 q、k、v，再和存下的 k、v 做注意力。这就是 **KV cache**。两种办法写出的字完全一样，
# 只是快慢不同——上下文越长，差得越多。
#
# Without a cache every new character recomputes the whole context (as the tutorial does). But the keys and
# values of the earlier characters never change: keep them, and each step computes q, k, v for the new
# character only and attends over the stored ones. That is the **KV cache**. Both ways write exactly the same
# characters; only the speed differs, more so the longer the context.

# %%
from tianci.model import GPT, KVCache

show_source(KVCache.__init__)
show_source(KVCache.advance)
show_source(GPT.hidden, "pos0 = kv_cache.pos", "kv_cache.advance(T)")

# %% [markdown]
# 用教程最后那个模型的形状（预设 `ci-gpu`：6 层、384 宽、上下文 256）来量，权重是随机的——速度和权重无关。
# 贪心解码，两种方式写出的字应当完全相同。
#
# Measured at the shape of the tutorial's final model (preset `ci-gpu`: 6 layers, 384 wide, context 256) with
# random weights (speed does not depend on them). Greedy decoding: both ways must write the same characters.

# %%
from tianci.config import load_preset

big_cfg = load_preset("ci-gpu").model
big_cfg.vocab_size, big_cfg.dropout = tok.vocab_size, 0.0
big = GPT(big_cfg).eval()
n_new = budget(200, 24)
prompt = torch.tensor([tok.encode("\n\n浣溪沙 晏殊\n")])
results = {}
torch.set_num_threads(min(2, os.cpu_count() or 1))
for use_cache in (False, True):
    with Timer() as t:
        toks = torch.stack(list(generate(big, prompt, n_new, temperature=0, use_cache=use_cache)), dim=1)
    results[use_cache] = (toks, t.seconds)
    print(f"use_cache={use_cache!s:<5}  {n_new} tokens in {t.seconds:.2f}s = {n_new / t.seconds:6.1f} tokens/s")
speedup = results[False][1] / results[True][1]
print(f"KV cache speed-up: {speedup:.1f}x  (6x384, {n_new} new tokens, {torch.get_num_threads()} threads, "
      f"this machine)")

# The same characters either way (checked on the trained model, whose top choices are clear-cut; random
# weights give near-ties that rounding differences could flip).
same = [torch.stack(list(generate(model, prompt, 30, temperature=0, use_cache=c)), dim=1) for c in (False, True)]
assert torch.equal(*same), "the cache must not change what is written"
print("greedy, trained model: identical with and without the cache:", tok.decode(same[1][0]).replace("\n", " / "))

# %% [markdown]
# 更多（int8 权重、编译后的解码步、GPU）见 docs/speed.md 和 `tianci bench`（第 12 章）。
# More (int8 weights, a compiled decoding step, GPUs): docs/speed.md and `tianci bench` (chapter 12).
#
# ## 练习 / Exercise
#
# 自己写 top-k：给定上面的 `logits`（形状 (V,)）和 k = 20，把不在最大的 20 个里的 logits 设成 −∞，结果赋给
# `answer`。检查格和 `filter_logits(..., top_k=20)` 比较：留下的字必须完全相同。
#
# Write top-k yourself: given `logits` above (shape (V,)) and k = 20, set every logit outside the 20 largest to
# −∞, into `answer`. The check compares with `filter_logits(..., top_k=20)`: the kept characters must be the
# same.

# %%
k = 20
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    kth = logits.sort(descending=True).values[k - 1]
    answer = torch.where(logits >= kth, logits, torch.tensor(float("-inf")))

# %%
mine = torch.isfinite(answer)
lib = torch.isfinite(filter_logits(logits[None], 1.0, top_k=k)[0])
check("characters kept by your top-k that filter_logits would not", int((mine ^ lib).sum()), 0)
check("characters kept", int(mine.sum()), k)

# %% [markdown]
# **下一章 / Next:** [第 11 章 填词 / composing to a tune](11_tianci.py)

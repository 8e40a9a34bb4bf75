# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 0 章 准备：语料、字和分词器
# # Chapter 0. Getting ready: the corpus, characters and the tokenizer
#
# **怎么用这本课 / How to use the course.** 每一章是一个笔记本：从上到下一格一格地运行（Shift+Enter）。
# 看每一格的输出，改一改代码再运行。每章最后有一道练习，下一格会自动检查你的答案。不懂的词查
# [术语表 glossary.md](glossary.md)。
#
# Each chapter is a notebook: run it cell by cell from the top (Shift+Enter), read each output, change
# the code and run it again. Each chapter ends with an exercise that the next cell checks for you.
# Unfamiliar words are explained in the [glossary](glossary.md).
#
# 本章：宋词语料从哪里来，它变成了什么文件；什么是 **token（词元）**；字表为什么有 6,104 个字；
# encode / decode 怎么工作。 This chapter: where the Song ci corpus comes from and what it becomes;
# what a **token** is; why the vocabulary has 6,104 characters; how encode and decode work.

# %%
from coursekit import *  # the course's helpers: DATA, check, show_source, ...

print("short mode (TIANCI_COURSE_FAST=1):", FAST)
print("the data folder:", DATA.relative_to(REPO) if DATA.is_relative_to(REPO) else DATA)

# %% [markdown]
# ## 1. 准备语料 / Prepare the corpus
#
# 语料是 [chinese-poetry](https://github.com/chinese-poetry/chinese-poetry) 里的全宋词（约 21,000 首）。
# `tianci prepare` 把它读进来、切成训练集和验证集、编码成数字，写进一个数据目录。它从环境变量
# `TIANCI_POETRY_SOURCE` 指向的本地副本读，没有的话从 GitHub 下载一次。在终端里就是这一行：
#
# The corpus is the complete Song ci (about 21,000 poems) from chinese-poetry. `tianci prepare` reads it,
# splits it into a training and a validation set, encodes it as numbers and writes a data folder. It reads
# the local copy that `TIANCI_POETRY_SOURCE` points at, else downloads it once. In a terminal:
#
# ```bash
# tianci prepare --out data/ci
# ```

# %%
tianci_cli("prepare", "--out", DATA)

# %% [markdown]
# 数据目录里有这些文件 / The folder now holds:
#
# | 文件 file | 内容 what |
# |---|---|
# | `ci.txt` | 全部词，一行标题 `词牌 作者`，一段一行，每首之后一个空行 / every poem: a title line, one paragraph a line, a blank line after each poem |
# | `poems.jsonl` | 每行一首：词牌、作者、段落、属于 train 还是 val / one poem a line, with its split |
# | `train.bin`, `val.bin` | 编码后的数字（每个 2 字节）/ the token ids, 2 bytes each |
# | `tokenizer.json` | 字表 / the character table |
# | `meta.json` | 统计 / counts |

# %%
import json

meta = json.loads((DATA / "meta.json").read_text(encoding="utf-8"))
for k in ("n_poems", "n_train", "n_val", "vocab_size", "train_chars", "val_chars", "split"):
    print(f"{k:>12}: {meta[k]:,}" if isinstance(meta[k], int) else f"{k:>12}: {meta[k]}")

# %% [markdown]
# **按整首切分 / Split by whole poem.** 验证集（val）是随机挑出的 10% 的词，整首整首地挑，所以同一首词不会
# 一半在训练集、一半在验证集。模型只在训练集上学；验证集用来诚实地检查它学得怎样——就像考试题不能
# 提前给学生看。
#
# The validation set is a random 10% of the poems, taken whole, so no poem is half in training and half in
# validation. The model learns only from the training set; the validation set checks honestly how well it
# learned, like exam questions the student has not seen.

# %%
text = (DATA / "ci.txt").read_text(encoding="utf-8")
print(text[:300])

# %% [markdown]
# ## 2. 字和字表 / Characters and the vocabulary
#
# 这门课的模型一次读写一个**字**。语料里出现过的所有不同的字（包括标点 `，。、` 和换行 `\n`、空格）
# 排好序就是**字表（vocabulary）**。
#
# The models in this course read and write one **character** at a time. All the distinct characters of the
# corpus (punctuation, the newline and the space included), sorted, are the **vocabulary**.

# %%
from collections import Counter

chars = sorted(set(text))
print("distinct characters:", len(chars))
print("the first 20:", chars[:20])
freq = Counter(text)
print("the 20 most common:", "".join(c if c != "\n" else "⏎" for c, _ in freq.most_common(20)))
print("characters seen only once:", sum(1 for c in freq if freq[c] == 1))

# %% [markdown]
# ## 3. 分词器：字 ↔ 数字 / The tokenizer: characters ↔ numbers
#
# 神经网络只会算数字，所以每个字要换成一个编号。这个编号叫 **token id**，一个字就是一个 **token（词元）**。
# 最简单的分词器就是上面那张排好序的表：字在表里的位置就是它的编号。`encode` 把文字变成编号，`decode`
# 把编号变回文字。（更大的模型常用 BPE，把常见的字组合成一个 token，见 docs/tokenizers.md。）
#
# A network computes with numbers, so each character gets a number, its **token id**; here one character is
# one **token**. The simplest tokenizer is the sorted table above: a character's position is its id.
# `encode` turns text into ids, `decode` turns ids back into text. (Larger models often use BPE, where one
# token can be several characters; see docs/tokenizers.md.)

# %%
from tianci.tokenizer import load_tokenizer

tok = load_tokenizer(DATA / "tokenizer.json")
print("vocab_size:", tok.vocab_size)
ids = tok.encode("春花秋月何时了")
print("encode:", ids)
print("decode:", tok.decode(ids))
print("same table as ours:", tok.chars == chars)

# %% [markdown]
# 不在字表里的字会得到一句清楚的错误（而不是悄悄丢掉）/ A character outside the vocabulary gets a clear
# error, not a silent drop:

# %%
from tianci.errors import TianciError

try:
    tok.encode("春😀")
except TianciError as e:
    print("TianciError:", e)

# %% [markdown]
# ## 4. train.bin：一长串数字 / train.bin: one long row of numbers
#
# 训练集的全部词首尾相接，编码后存成 `train.bin`：每个编号占 2 字节（uint16，因为 6,104 < 65,536）。
# 训练时模型从里面随机切出一小段一小段来读。
#
# All training poems, end to end and encoded, are stored in `train.bin`, 2 bytes per id (uint16, since
# 6,104 < 65,536). Training reads random short windows out of it.

# %%
import numpy as np

train_ids = np.fromfile(DATA / "train.bin", dtype=np.uint16)
val_ids = np.fromfile(DATA / "val.bin", dtype=np.uint16)
print("train tokens:", f"{len(train_ids):,}", " val tokens:", f"{len(val_ids):,}")
print("first 30 ids:", train_ids[:30].tolist())
print(repr(tok.decode(train_ids[:30])))

# %% [markdown]
# ## 练习 / Exercise
#
# 训练集（`train_ids`）里“春”字出现了多少次？用编号来数：先 `encode` 出“春”的编号，再数 `train_ids`
# 里有多少个它。把结果赋给 `answer`。
#
# How many times does 春 occur in the training set? Count with ids: `encode` 春, then count that id in
# `train_ids`. Put the number in `answer`.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案（先自己试；在 Jupyter 里点这一格展开）/ Reference answer (try first; click to expand)
if answer is None:
    answer = int((train_ids == tok.encode("春")[0]).sum())

# %%
# 检查：从 poems.jsonl 里的原文（训练集的词）重新数一遍，不经过编号。
# The check counts again in the original text of the training poems (poems.jsonl), without ids.
expected = 0
with open(DATA / "poems.jsonl", encoding="utf-8") as f:
    for line in f:
        p = json.loads(line)
        if p["split"] == "train":
            expected += (f"{p['rhythmic']} {p['author']}\n" + "\n".join(p["paragraphs"])).count("春")
check("春 in the training set", answer, expected)

# %% [markdown]
# **下一章 / Next:** [第 1 章 计数的二元模型 / the counting bigram](01_counting_bigram.py)

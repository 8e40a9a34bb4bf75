# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 11 章 填词：词谱、平仄、韵部、遮罩 logits
# # Chapter 11. 填词: the 词谱, 平仄, rhyme groups, masking logits
#
# 语言模型写出来的“词”像词，但字数、平仄、押韵全凭运气。**填词**是按一个词牌的格律来写：每句几个字、每个字位该平还是仄、
# 哪些字位押韵、押哪一部韵，都是定好的。tianci 的办法很简单：模型照常给出下一个字的 logits，解码器在采样之前把**不合格律的字
# 的 logits 设成 −∞**——softmax 之后它们的概率是 0，永远不会被抽到。模型负责文辞，格律由解码器保证。
#
# A language model's "ci" look like ci, but the length, the tones and the rhymes are luck. **填词** writes to a
# tune's pattern: characters per line, the tone of every slot, which slots rhyme and in which group are fixed.
# tianci's way is simple: the model gives next-character logits as usual, and before sampling the decoder sets
# the logits of every character that breaks the pattern to −∞, probability 0 after softmax, never drawn. The
# model supplies the words, the decoder guarantees the form.

# %%
from coursekit import *

import torch

from tianci.checkpoint import load_run
from tianci.ci.cipai import open_cipu
from tianci.ci.form import render
from tianci.ci.tones import PING, ZE, is_han

data = data_dir()
cp = open_cipu(data=data)  # 词谱 ($TIANCI_CIPU_SOURCE) + phonology ($TIANCI_RHYME_SOURCE) + corpus counts
phon = cp.phon

# %% [markdown]
# ## 1. 词谱 / The pattern of a tune
#
# 浣溪沙：上下两片，每片三句七言。○ 平，● 仄，◐ 平仄皆可；字后的 A、B… 是押韵的字位和它所属的韵组（换韵时有 B、C）。
# 浣溪沙: two stanzas of three seven-character lines. ○ level, ● oblique, ◐ either; a letter after a slot
# marks a rhyme and its group (B, C … when the rhyme changes).

# %%
form = cp.form("浣溪沙")
print(f"{form.name}: {form.n_chars} characters, {len(form.lines)} lines, variant {form.variant} "
      f"of {form.n_variants}")
print(render(form))
print("\ntones:", form.tones)
print("rhyme:", form.rhyme)

# %% [markdown]
# 菩萨蛮换四次韵（A、B、C、D）：/ 菩萨蛮 changes its rhyme four times:

# %%
print(render(cp.form("菩萨蛮")))

# %% [markdown]
# ## 2. 平仄和韵部 / Tones and rhyme groups
#
# 每个字的声调查《词林正韵》（宋人填词用的韵书）：平声算“平”，上、去、入声都算“仄”。入声字在普通话里有的变成了平声
# （国、月、白……），但宋词里它们是仄。押韵的字要在同一个**韵部**里（《词林正韵》共 19 部）。
#
# Each character's tone comes from the 词林正韵, the rhyme book written for ci: the level tone is 平, the
# rising, departing and entering tones are 仄. Some entering-tone characters became level in Mandarin (国, 月,
# 白 …) but in Song ci they are 仄. Rhyming characters must share a **rhyme group** (19 in the 词林正韵).

# %%
from tianci.ci.tones import bu_name

for ch in "春花月白国看重":
    groups = ", ".join(bu_name(b) for b in sorted(phon.groups(ch))) or "-"
    print(f"{ch}: tones {sorted(phon.tones(ch))}  rhyme groups: {groups}")

# %% [markdown]
# ## 3. 遮罩 logits / Masking the logits
#
# 先训练（或复用第 9 章的）一个小模型，让它在词牌名后面写第一个字。该字位是“平”：把所有不能读平声的字（以及不是汉字的
# token）遮掉，看看前几名怎么变。
#
# Train (or reuse chapter 9's) small model and let it write the first character after the title. The slot is
# 平: mask every token that is not a Han character with a level reading, and see how the top choices change.

# %%
rows = train_rungs(["residual"])
run = load_run(rows[0]["run_dir"])
model, tok = run.model, run.tokenizer

prompt = f"\n\n{form.title} 晏殊\n"
with torch.no_grad():
    logits = model(torch.tensor([tok.encode(prompt)]))[0][0, -1]  # (V,)
first_tone = form.tones[0]
allowed = torch.tensor([is_han(c) and phon.fits(c, first_tone) for c in tok.chars])  # (V,) booleans
masked = logits.masked_fill(~allowed, float("-inf"))
top = lambda lg: " ".join(f"{tok.chars[i]!r}{p:.2f}" for p, i in zip(*torch.softmax(lg, -1).topk(8)))  # noqa: E731
print(f"slot 1 is {first_tone}; {int(allowed.sum())} of {tok.vocab_size} tokens allowed")
print("before:", top(logits))
print("after: ", top(masked))

# %% [markdown]
# 填词的解码器对**每一格**都这样做：字位按平仄（押韵的字位还要在已选定的韵部里、且不重复用过的韵字），标点位只许这个
# 标点，段尾只许换行。这些遮罩每个词牌只建一次。它们通过 `generate` 的 `logits_hook` 接进那个唯一的采样函数（第 10 章）。
#
# The composer does this for **every** cell: a character slot by its tone (a rhyme slot also within the rhyme
# group chosen so far, with no rhyme character reused), a punctuation cell only that mark, a paragraph's end
# only the newline. The masks are built once per tune, and plug into the one sampler (chapter 10) through
# `generate`'s `logits_hook`.

# %%
from tianci.ci.compose import ConstrainedDecoder, compose
from tianci.generate import generate

show_source(ConstrainedDecoder.hook)
show_source(ConstrainedDecoder.row_hook)
show_source(generate, "if logits_hook is not None", "logits = logits_hook(logits, step)")

# %% [markdown]
# ## 4. 填一首 / Compose one

# %%
res = compose(model, tok, "浣溪沙", cipu=cp, seed=2)
print(f"{res.title} {res.author}")
print(res.text)
print(f"[rhyme {', '.join(res.rhyme)}; {res.seconds:.2f}s; backoffs: {len(res.backoffs)}]")

# %% [markdown]
# 一个独立的检查器 `check_poem` 重新读这首词：字数、标点、平仄、押韵。/ An independent checker, `check_poem`,
# re-reads the poem: lengths, punctuation, tones and rhymes.

# %%
from tianci.ci.compose_eval import check_poem

pc = check_poem(res.text, res.form, phon)
print(pc)

# %% [markdown]
# 小模型写得不通顺，但格律一个不错——格律是解码器保证的；文辞要靠更好的模型（第 12 章的 `ci-cpu`，或
# `tianci compose --run ...`）。
#
# The small model's words are clumsy, but the form is exact: the decoder guarantees it; better words need a
# better model (chapter 12's `ci-cpu`, or `tianci compose --run ...`).
#
# ## 练习 / Exercise
#
# 自己数：这首词的每个字位（按顺序取出所有汉字）和 `res.form.tones` 对齐，在“平”或“仄”的字位上，有几个字合乎
# 该字位的声调（用 `phon.fits(字, 声调)`）？赋给 `answer`；检查格和 `check_poem` 的 `tone_hits` 比较。
#
# Count yourself: line up the poem's characters (all Han characters, in order) with `res.form.tones`; on the
# 平 and 仄 slots, how many characters fit the slot's tone (`phon.fits(char, tone)`)? Into `answer`; the check
# compares with `check_poem`'s `tone_hits`.

# %%
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    chars = [c for c in res.text if is_han(c)]
    answer = sum(phon.fits(c, t) for c, t in zip(chars, res.form.tones) if t in (PING, ZE))

# %%
check("tone slots the poem fits", answer, pc.tone_hits)

# %% [markdown]
# **下一章 / Next:** [第 12 章 更进一步 / going further](12_further.py)

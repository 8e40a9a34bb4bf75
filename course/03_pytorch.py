# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 第 3 章 五分钟 PyTorch：张量、nn.Linear、损失、backward、优化器
# # Chapter 3. PyTorch in 5 minutes: tensors, nn.Linear, a loss, backward, an optimizer step
#
# 计数模型的“训练”就是数数。神经网络不会数数：它有一堆可调的数字（**参数**），训练就是一点一点调它们，让损失
# 变小。怎么知道往哪个方向调？**梯度（gradient）**：损失对每个参数的导数，告诉你“这个参数增大一点，损失会
# 变大还是变小、变多少”。PyTorch 替我们算梯度。本章用最简单的例子——拟合一条直线——把这件事走一遍。
#
# Training the counting model was counting. A network cannot count: it has many adjustable numbers
# (**parameters**), and training nudges them, step by step, to make the loss smaller. Which way to nudge?
# The **gradient**: the derivative of the loss with respect to each parameter, saying "if this parameter
# grows a little, does the loss grow or shrink, and how fast". PyTorch computes gradients for us. This
# chapter walks through it on the simplest example: fitting a straight line.

# %%
from coursekit import *

import torch
import torch.nn as nn
from torch.nn import functional as F

torch.manual_seed(1337)

# %% [markdown]
# ## 1. 张量 / Tensors
#
# 张量（tensor）就是多维数组，和 numpy 的数组一样有形状（shape）和类型（dtype），还能记住自己是怎么算出来的。
# A tensor is a multi-dimensional array, like numpy's, with a shape and a dtype; it can also remember how it
# was computed.

# %%
a = torch.arange(6, dtype=torch.float32).view(2, 3)  # (2, 3)
b = torch.ones(3, 4)  # (3, 4)
print(a)
print("a @ b:", (a @ b).shape, " a.sum(dim=1):", a.sum(dim=1), " a.T:", a.T.shape)

# %% [markdown]
# ## 2. 自动求导 / Automatic gradients
#
# `requires_grad=True` 让 PyTorch 记下计算过程；`backward()` 沿着这个过程倒着算出导数，存进 `.grad`。
# y = x² 的导数是 2x，所以 x = 3 时梯度是 6。
#
# `requires_grad=True` makes PyTorch record the computation; `backward()` runs it backwards and stores the
# derivatives in `.grad`. The derivative of y = x² is 2x: at x = 3 the gradient is 6.

# %%
x = torch.tensor(3.0, requires_grad=True)
y = x ** 2
y.backward()
print("dy/dx at x=3:", x.grad.item())

# %% [markdown]
# ## 3. 线性回归 / Linear regression
#
# 造一些点：y = 3x + 2，再加一点噪声。模型 `nn.Linear(1, 1)` 就是 y = w·x + b，w 和 b 是它的两个参数，
# 一开始是随机的。损失用**均方误差**：预测和真值之差的平方的平均。
#
# Make some points, y = 3x + 2 plus noise. The model `nn.Linear(1, 1)` is y = w·x + b with two parameters,
# w and b, random at first. The loss is the **mean squared error**: the average squared difference between
# prediction and truth.

# %%
N = 100
xs = torch.rand(N, 1) * 2 - 1  # (N, 1) in [-1, 1]
ys = 3 * xs + 2 + 0.1 * torch.randn(N, 1)  # (N, 1)

model = nn.Linear(1, 1)
print("before training: w =", round(model.weight.item(), 3), " b =", round(model.bias.item(), 3))
print("loss before:", F.mse_loss(model(xs), ys).item())

# %% [markdown]
# **训练就是这四行，重复很多遍 / Training is these four lines, repeated:**
#
# 1. `pred = model(xs)` — 前向（forward）：用现在的参数做预测 / predict with the current parameters
# 2. `loss = F.mse_loss(pred, ys)` — 打分 / score the prediction
# 3. `loss.backward()` — 反向（backward）：算每个参数的梯度 / compute every parameter's gradient
# 4. `opt.step()` — 优化器把每个参数往梯度的反方向挪一小步（步长 = **学习率 / learning rate**）
#    / the optimizer moves each parameter a small step against its gradient (step size = learning rate)
#
# `opt.zero_grad()` 清掉上一步的梯度（否则 PyTorch 会把它们加起来）。`SGD` 就是最朴素的“参数 −= 学习率 × 梯度”。
# `opt.zero_grad()` clears last step's gradients (PyTorch would add them up otherwise). `SGD` is the plain
# "parameter −= learning rate × gradient".

# %%
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(201):
    pred = model(xs)  # (N, 1)
    loss = F.mse_loss(pred, ys)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(f"step {step:>3}  loss {loss.item():.4f}  w {model.weight.item():.3f}  b {model.bias.item():.3f}")

# %% [markdown]
# w 接近 3，b 接近 2：模型从数据里“学会”了这条直线。把直线换成 GPT、把均方误差换成下一个字的交叉熵，
# 把 SGD 换成 AdamW，这就是后面每一章的训练。
#
# w is near 3 and b near 2: the model has learned the line from the data. Replace the line by a GPT, the
# squared error by the next-character cross-entropy and SGD by AdamW: that is the training in every later
# chapter.
#
# 直线有一个精确解（最小二乘），可以对照 / A line has an exact solution (least squares) to compare with:

# %%
X = torch.cat([xs, torch.ones(N, 1)], dim=1)  # (N, 2): columns x and 1
w_exact, b_exact = torch.linalg.lstsq(X, ys).solution.flatten().tolist()
print(f"least squares: w {w_exact:.3f}  b {b_exact:.3f}   trained: w {model.weight.item():.3f}  "
      f"b {model.bias.item():.3f}")

# %% [markdown]
# ## 4. AdamW：后面用的优化器 / AdamW, the optimizer used later
#
# SGD 对每个参数用同一个步长。**Adam** 给每个参数记住梯度的平均（动量）和梯度平方的平均，用它们给每个参数
# 自己定步长，所以对不同尺度的参数都好用。**AdamW** 再加上**权重衰减（weight decay）**：每一步把参数往 0 拉一点点，
# 防止它们长得过大。
#
# SGD uses one step size for every parameter. **Adam** keeps, per parameter, a running mean of the gradient
# (momentum) and of its square, and sizes each parameter's step from them, so it copes with parameters of very
# different scales. **AdamW** adds **weight decay**: each step pulls every parameter slightly towards 0, so none
# grows too large.

# %%
model2 = nn.Linear(1, 1)
opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1, weight_decay=0.0)
for step in range(201):
    loss = F.mse_loss(model2(xs), ys)
    opt2.zero_grad()
    loss.backward()
    opt2.step()
print(f"AdamW after 200 steps: w {model2.weight.item():.3f}  b {model2.bias.item():.3f}  loss {loss.item():.4f}")

# %% [markdown]
# ## 练习 / Exercise
#
# 均方误差 L = (1/N) Σ (w·x + b − y)² 对 w 的导数是 (2/N) Σ (w·x + b − y)·x。用这个公式**手算**新模型
# `m` 在数据上的 ∂L/∂w，赋给 `answer`。检查格会让 PyTorch 的 `backward()` 算一遍来比较。
#
# For the mean squared error L = (1/N) Σ (w·x + b − y)², the derivative with respect to w is
# (2/N) Σ (w·x + b − y)·x. Compute ∂L/∂w **by hand** with this formula for the fresh model `m`, into
# `answer`. The check lets PyTorch's `backward()` compute it.

# %%
m = nn.Linear(1, 1)
answer = None  # 你的答案 / your answer

# %% jupyter={"source_hidden": true}
# 参考答案 / Reference answer
if answer is None:
    with torch.no_grad():
        w, b = m.weight.item(), m.bias.item()
        answer = (2 / N * ((w * xs + b - ys) * xs).sum()).item()

# %%
F.mse_loss(m(xs), ys).backward()
check("dL/dw by hand", answer, m.weight.grad.item(), tol=1e-5)

# %% [markdown]
# **下一章 / Next:** [第 4 章 PyTorch 的二元模型 / the torch bigram](04_torch_bigram.py)

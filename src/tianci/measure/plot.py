"""Pictures of training: loss curves, the ladder's bar chart, attention maps.

matplotlib is an optional extra (pip install 'tianci[plot]'): it is imported inside the
functions, with the headless Agg backend, so these work on a server with no display and
`import tianci.measure.plot` costs nothing. Attention maps label their axes with the characters
themselves, which needs a CJK font; we look for one on the machine and fall back to
unicode escapes (with a warning) when there is none.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

from ..checkpoint import LN2
from ..errors import TianciError


# Families (as fontconfig/matplotlib name them) that cover Chinese, best first.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Serif CJK SC",
                "Noto Serif CJK JP", "Noto Sans SC", "Noto Serif SC", "Source Han Sans SC",
                "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "AR PL UMing CN",
                "AR PL UKai CN", "Droid Sans Fallback", "SimHei", "Microsoft YaHei", "PingFang SC",
                "Heiti SC", "Hiragino Sans GB", "Arial Unicode MS")
_CJK_FILE = re.compile(r"(NotoSans.*CJK|NotoSerif.*CJK|NotoSans(SC|TC)|SourceHan|wqy|WenQuanYi|DroidSansFallback"
                       r"|uming|ukai|simhei|msyh|PingFang|Hiragino)", re.I)


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a TianciError that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise TianciError("plotting needs matplotlib: pip install 'tianci[plot]'") from None
    matplotlib.use("Agg")  # files, not windows: works headless and in CI
    import matplotlib.pyplot as plt
    return plt


def find_cjk_font() -> str | None:
    """The family name of a CJK-capable font installed on this machine, or None."""
    pyplot()
    from matplotlib import font_manager as fm

    have = {f.name for f in fm.fontManager.ttflist}
    for fam in CJK_FAMILIES:
        if fam in have:
            return fam
    # matplotlib caches its font list; fonts installed after the cache was built (apt-get install
    # fonts-noto-cjk) are missing from it, so also look at the files, register them, and pick
    # again (regular weights first: a Bold-only registration makes every label bold).
    files = [p for p in fm.findSystemFonts() if _CJK_FILE.search(Path(p).name)]
    files.sort(key=lambda p: ("Regular" not in p, p))
    names = []
    for path in files:
        try:
            fm.fontManager.addfont(path)
            names.append(fm.FontProperties(fname=path).get_name())
        except (OSError, RuntimeError, ValueError):
            continue
    for fam in CJK_FAMILIES:
        if fam in names:
            return fam
    if names:
        return names[0]
    return None


# ----------------------------------------------------------------------------- loss curves

def read_metrics(run_dir) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a run's metrics.jsonl (see checkpoint.Run.metrics)."""
    from ..checkpoint import Run

    return Run(run_dir).metrics()


def _counting_val(run_dir, records: list[dict]) -> float | None:
    """The counting model's val loss in nats/char, or None for a GPT run. It has no curve: one
    number from counting, drawn as a level line. (Runs from before the loss unit was one kept
    nats/token in val_loss and nats/char in val_nats_per_char.)"""
    from ..checkpoint import Run

    try:
        kind = Run(run_dir).config().get("kind")
    except TianciError:
        kind = None
    if kind != "ngram" or not records:
        return None
    rec = records[-1]
    return rec.get("val_nats_per_char", rec.get("val_loss"))


def plot_runs(run_dirs, out, labels=None, title: str | None = None) -> Path:
    """Train (thin) and val (thick, dots) loss of each run, in bits per character, against step,
    tokens seen and wall time: three panels sharing the y axis. A counting-model run (no training
    curve) is a dashed level line at its val loss."""
    plt = pyplot()
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise TianciError("give at least one run directory to plot")
    labels = list(labels or [r.name for r in run_dirs])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    xs = (("step", "step"), ("tokens", "tokens seen"), ("time", "wall time (s)"))
    plotted = 0
    for i, (run, label) in enumerate(zip(run_dirs, labels)):
        train, evals = read_metrics(run)
        color = f"C{i % 10}" if len(run_dirs) <= 10 else plt.get_cmap("tab20")(i % 20)  # no repeats
        counting = _counting_val(run, evals + train)
        if counting is None:
            train, evals = [r for r in train if "step" in r], [r for r in evals if "val_loss" in r]
        for ax, (key, _) in zip(axes, xs):
            if counting is not None:
                ax.axhline(counting / LN2, color=color, ls="--", lw=1.5, label=f"{label} (counting, val)")
                continue
            tr = [r for r in train if key in r]
            ev = [r for r in evals if key in r]
            if tr:
                ax.plot([r[key] for r in tr], [r["train_loss"] / LN2 for r in tr], color=color,
                        alpha=0.35, lw=0.8)
            if ev:
                ax.plot([r[key] for r in ev], [r["val_loss"] / LN2 for r in ev], color=color,
                        lw=2, marker="o", ms=3, label=f"{label} (val)")
        plotted += bool(train or evals or counting is not None)
    if not plotted:
        raise TianciError("none of the runs has logged any loss yet")
    for ax, (_, name) in zip(axes, xs):
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (bits per character)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "train (thin) and validation (thick) loss")
    fig.tight_layout()
    return _save(fig, out)


def plot_ladder(rows: list[dict], out, title: str | None = None) -> Path:
    """Bar chart of validation bits/char per rung (rows as written by tianci.measure.ladder)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4.5))
    names = [r["rung"] for r in rows]
    vals = [r["val_bpc"] for r in rows]
    colors = ["0.6" if r.get("kind") == "ngram" else ("C2" if r.get("tokenizer") == "bpe" else "C0")
              for r in rows]
    bars = ax.bar(range(len(rows)), vals, color=colors)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), names, rotation=35, ha="right")
    ax.set_ylabel("validation loss (bits per character)")
    ax.set_ylim(0, max(vals) * 1.12 if vals else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "the ladder: validation loss per rung (lower is better)")
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- attention

def attention_weights(model, idx, layer: int = 0):
    """softmax(q k^T / sqrt(hs)) of every head of one layer: a (heads, T, T) float tensor.

    Recomputed from the model's own modules (the forward pass does not keep them): the model's own
    forward records what the block at `layer` reads (so every input switch, the x0 lambdas
    included, is the model's), then that block's query/key projections (loop or fused layout),
    with RoPE / QK-norm applied exactly as in the model."""
    import torch
    from torch.nn import functional as F

    from ..attention import FusedAttention, _causal_mask, _qk_prepare

    cfg = model.config
    if not 0 <= layer < len(model.h):
        raise TianciError(f"--layer {layer} is out of range: this model has {len(model.h)} layer(s) "
                          f"(0..{len(model.h) - 1})")
    block = model.h[layer]
    if block.attn is None:
        raise TianciError(f"this model has no attention (attn={cfg.attn!r}): pick a run from the "
                          "+self-attention rung or later")
    idx = idx[:, -cfg.block_size:]
    B, T = idx.shape
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            seen = []
            hook = block.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
            try:
                model.hidden(idx)
            finally:
                hook.remove()
            xin = block.ln_1(seen[0])
            attn = block.attn
            if isinstance(attn, FusedAttention):
                nh, C = cfg.heads, cfg.n_embd
                q, k, _ = attn.c_attn(xin).split(C, dim=2)
                q, k = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
            else:
                q = torch.stack([h.query(xin) for h in attn.heads], dim=1)
                k = torch.stack([h.key(xin) for h in attn.heads], dim=1)
            q, k = _qk_prepare(q, k, cfg, 0)
            wei = q.float() @ k.float().transpose(-2, -1) * k.shape[-1] ** -0.5
            wei = wei.masked_fill(~_causal_mask(T, T, 0, idx.device), float("-inf"))
            return F.softmax(wei, dim=-1)[0]
        finally:
            model.train(was)


def _labels(tokens: list[str], font: str | None) -> list[str]:
    if font is not None:
        return [t.replace("\n", "⏎") for t in tokens]
    return ["".join(c if c.isascii() and c.isprintable() else ("\\n" if c == "\n" else f"\\u{ord(c):04x}")
                    for c in t) for t in tokens]


def plot_attention(weights, tokens: list[str], out, title: str = "", font: str | None = "auto") -> Path:
    """One heat map per head: row = the token that looks, column = the token looked at."""
    plt = pyplot()
    if font == "auto":
        font = find_cjk_font()
        if font is None:
            warnings.warn("no CJK font found (install fonts-noto-cjk): labelling characters with unicode "
                          "escapes", stacklevel=2)
    w = weights.detach().cpu().numpy() if hasattr(weights, "detach") else weights
    nh, T = w.shape[0], w.shape[-1]
    cols = min(nh, 4)
    rows = math.ceil(nh / cols)
    size = max(3.0, 0.28 * T + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    labels = _labels(tokens, font)
    fp = None
    if font is not None:
        from matplotlib.font_manager import FontProperties
        fp = FontProperties(family=font)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= nh:
            ax.axis("off")
            continue
        ax.imshow(w[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        rot = 0 if font is not None else 90
        ax.set_xticklabels(labels, fontproperties=fp, fontsize=9, rotation=rot)
        ax.set_yticklabels(labels, fontproperties=fp, fontsize=9)
        ax.set_title(f"head {h}", fontsize=10)
    fig.suptitle(title or "attention: each row is a character, its weights over the characters before it",
                 fontproperties=fp)
    fig.tight_layout()
    return _save(fig, out)

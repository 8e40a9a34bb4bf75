"""Plots (headless, with and without a CJK font), attention weights as the model computes them,
and the experiment trackers (tensorboard event files, wandb offline)."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

from tianci.measure import plot  # noqa: E402
from tianci.config import GPTConfig, load_preset, to_dict  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(d, n=5, scale=1.0):
    d.mkdir(parents=True)
    lines = []
    for s in range(1, n + 1):
        lines.append({"step": s * 10, "time": s * 0.5, "tokens": s * 1000, "lr": 1e-3,
                      "train_loss": scale * 5 / s, "tok_per_s": 2000.0})
        lines.append({"step": s * 10, "eval": True, "time": s * 0.5, "tokens": s * 1000,
                      "train_loss": scale * 5 / s, "val_loss": scale * 5.2 / s, "val_bpc": scale * 7.5 / s})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return d


def test_plot_runs_headless(tmp_path):
    """Guards: `tianci plot` must write a PNG of several runs without a display (Agg backend)."""
    from tianci.cli import main

    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", scale=0.8)
    out = tmp_path / "loss.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    import matplotlib
    assert matplotlib.get_backend().lower() == "agg"


def test_plot_runs_names_a_bad_run(tmp_path):
    """Guards: plotting a directory that is not a run must name it, not crash with a traceback."""
    from tianci.errors import TianciError

    with pytest.raises(TianciError, match="metrics.jsonl"):
        plot.plot_runs([tmp_path], tmp_path / "x.png")


def _tiny_model(attn_impl="loop", **kw):
    torch.manual_seed(0)
    from tianci.model import GPT

    cfg = GPTConfig(**{"vocab_size": 20, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16,
                       "attn_impl": attn_impl, **kw})
    return GPT(cfg).eval()


@pytest.mark.parametrize("attn_impl,extra", [("loop", {}), ("sdpa", {}), ("sdpa", {"pos": "rope", "qk_norm": True}),
                                             ("loop", {"pos": "rope"})])
def test_attention_weights_are_the_models(attn_impl, extra):
    """Guards: the recomputed attention maps must be exactly what the model uses: weights @ values
    reproduces the attention output of layer 1 (loop and fused layouts, RoPE, QK-norm)."""
    m = _tiny_model(attn_impl, proj=False, **extra)
    idx = torch.randint(0, 20, (1, 9))
    w = plot.attention_weights(m, idx, layer=1)
    assert w.shape == (2, 9, 9)
    assert torch.allclose(w.sum(-1), torch.ones(2, 9), atol=1e-5)
    assert torch.all(w.triu(1) == 0)  # causal: nothing from the future
    with torch.no_grad():
        x = m.h[0](m.wte(idx) + (m.wpe(torch.arange(9)) if m.wpe is not None else 0))
        xin = m.h[1].ln_1(x)
        attn = m.h[1].attn
        want = attn(xin)
        if attn_impl == "loop":
            v = torch.stack([h.value(xin) for h in attn.heads], dim=1)[0]  # (nh, T, hs)
        else:
            v = attn.c_attn(xin).split(16, dim=2)[2].view(1, 9, 2, 8).transpose(1, 2)[0]
        got = (w @ v).transpose(0, 1).reshape(9, 16)
    assert torch.allclose(got, want[0], atol=1e-5)


def test_attention_weights_reject_a_model_without_attention():
    """Guards: the bigram rung has no attention; asking for its maps must say so clearly."""
    from tianci.errors import TianciError

    m = _tiny_model(attn="none", mlp=False, n_layer=1)
    with pytest.raises(TianciError, match="no attention|out of range"):
        plot.attention_weights(m, torch.zeros(1, 3, dtype=torch.long), 0)


def _save_run(tmp_path, model, chars):
    from tianci.checkpoint import save_weights
    from tianci.config import Preset
    from tianci.tokenizer import CharTokenizer

    run = tmp_path / "run"
    run.mkdir()
    preset = Preset(name="tiny", model=model.config)
    (run / "config.json").write_text(json.dumps({"kind": "gpt", "preset": to_dict(preset), "data": {}}))
    CharTokenizer(sorted(chars)).save(run / "tokenizer.json")
    save_weights(model, run / "best.safetensors")
    return run


def test_attention_command_with_and_without_cjk_font(tmp_path, monkeypatch):
    """Guards: `tianci attention` must draw every head's map, and with no CJK font on the machine
    it must warn and still write a readable PNG (escaped labels), not fail or print tofu silently."""
    from tianci.cli import main

    chars = "春花秋月何时了往事知多少小楼昨夜又东风。"
    run = _save_run(tmp_path, _tiny_model("sdpa"), chars)
    out1 = tmp_path / "a.png"
    args = ["attention", "--run", str(run), "--text", "春花秋月何时了", "--layer", "1", "--out", str(out1)]
    assert main(args) == 0
    assert out1.read_bytes()[:8] == PNG
    monkeypatch.setattr(plot, "find_cjk_font", lambda: None)
    out2 = tmp_path / "b.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["attention", "--run", str(run), "--text", "春花秋月", "--out", str(out2)]) == 0
    assert any("CJK" in str(w.message) for w in caught)
    assert out2.read_bytes()[:8] == PNG
    assert plot._labels(["春", "a", "\n"], None) == ["\\u6625", "a", "\\n"]


def test_find_cjk_font_returns_a_usable_family_or_none():
    """Guards: the font finder must return a family matplotlib can resolve (or None), never a
    name that silently falls back to DejaVu and draws boxes."""
    fam = plot.find_cjk_font()
    if fam is None:
        pytest.skip("no CJK font on this machine (apt-get install fonts-noto-cjk)")
    from matplotlib import font_manager as fm

    path = fm.findfont(fm.FontProperties(family=fam), fallback_to_default=False)
    assert path


# ----------------------------------------------------------------------------- trackers

def _train_tiny(data, out, log):
    from tianci.train import train

    preset = load_preset("bigram")
    preset.model.block_size = 8
    tc = preset.train
    tc.max_iters, tc.eval_iters, tc.eval_interval, tc.log_interval = 4, 1, 2, 1
    tc.batch_size, tc.device, tc.progress, tc.log = 4, "cpu", False, log
    return train(preset, data, out, quiet=True)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from tianci.corpus import Corpus, build

    d = tmp_path_factory.mktemp("data")
    build(Corpus(docs=["春花秋月何时了\n往事知多少"] * 30, source="synthetic"), d, force=True)
    return d


def test_tensorboard_mirrors_metrics(small_data, tmp_path):
    """Guards: --log tensorboard must write event files whose val loss equals metrics.jsonl's."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train_tiny(small_data, tmp_path / "run", "tensorboard")
    tb = tmp_path / "run" / "tb"
    assert list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    got = [round(e.value, 4) for e in acc.Scalars("eval/val_loss")]
    want = [round(json.loads(x)["val_loss"], 4) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if json.loads(x).get("eval")]
    assert got == want and len(got) >= 2


def test_wandb_offline(small_data, tmp_path, monkeypatch):
    """Guards: --log wandb must work with no account (offline mode) and write a local run."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train_tiny(small_data, tmp_path / "run", "wandb")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_plot_gpt_and_counting_runs_together(small_data, tmp_path, capsys):
    """Guards: `tianci plot runs/ci runs/count` dying with KeyError: 'tokens' (the counting run's metrics
    had no tokens field and their val_loss was per token): the counting run is a level line at its val
    loss in nats/char, the same unit as the GPT's."""
    from tianci.cli import main

    _train_tiny(small_data, tmp_path / "ci", "none")
    assert main(["train", "--preset", "counting", "--data", str(small_data), "--out", str(tmp_path / "count")]) == 0
    rec = json.loads((tmp_path / "count" / "metrics.jsonl").read_text())
    assert rec["eval"] and {"tokens", "time", "val_loss", "val_bpc"} <= set(rec)
    out = tmp_path / "loss.png"
    assert main(["plot", str(tmp_path / "ci"), str(tmp_path / "count"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and "Traceback" not in capsys.readouterr().err

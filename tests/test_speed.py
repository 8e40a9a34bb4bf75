"""The speedrun pieces: the adaptive output head (exact log-probs, frequency order, training and
checkpoints through it)."""

from __future__ import annotations

import pytest
import torch

from tianci.config import ConfigError, GPTConfig
from tianci.model import GPT


def small_cfg(**kw) -> GPTConfig:
    base = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=False, pos="rope",
                norm="rmsnorm", head="adaptive", head_cutoffs="10,40")
    base.update(kw)
    return GPTConfig(**base)


def zipf_counts(v: int, seed: int = 0) -> torch.Tensor:
    """Zipfian counts assigned to shuffled ids, so frequency order is far from id order."""
    g = torch.Generator().manual_seed(seed)
    counts = (1e6 / torch.arange(1, v + 1, dtype=torch.float64)).round().long()
    return counts[torch.randperm(v, generator=g)]


def test_adaptive_head_gives_a_full_distribution_that_matches_its_loss():
    """Guards: a head whose sampling distribution is not the one it was trained on (a missing or
    inverted id<->rank permutation, a tail cluster left out of log_prob): the no-target logits must
    be log-probs over all V ids summing to 1, and the training loss must equal their mean NLL."""
    torch.manual_seed(0)
    m = GPT(small_cfg()).eval()
    m.lm_head.set_frequencies(zipf_counts(97))
    idx = torch.randint(0, 97, (3, 16))
    y = torch.randint(0, 97, (3, 16))
    with torch.no_grad():
        lp, none = m(idx)
        _, loss = m(idx, y, return_logits=False)
        lp2, loss2 = m(idx, y)
    assert none is None and lp.shape == (3, 16, 97)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(3, 16), atol=1e-5, rtol=0)
    nll = -lp.gather(-1, y[..., None]).mean()
    torch.testing.assert_close(loss, nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(lp2, lp)
    # the distribution depends on the permutation: the identity order gives a different one
    ident = GPT(small_cfg()).eval()
    ident.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("lm_head.rank")
                           and not k.startswith("lm_head.order")}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(ident(idx)[0], lp)


def test_frequency_order_puts_frequent_ids_in_the_head():
    """Guards: cutoffs applied to code-point ids instead of frequency ranks (the char tokenizer
    sorts characters, not counts): after set_frequencies the most frequent id has rank 0, rank and
    order are inverse permutations, and tail_mass is the tail clusters' share of the counts."""
    m = GPT(small_cfg())
    counts = zipf_counts(97, seed=1)
    m.lm_head.set_frequencies(counts)
    h = m.lm_head
    assert int(h.rank[counts.argmax()]) == 0
    assert torch.equal(h.rank[h.order], torch.arange(97))
    sorted_counts = counts[h.order]
    assert bool((sorted_counts[:-1] >= sorted_counts[1:]).all())
    total = float(counts.sum())
    expect = [float(sorted_counts[10:40].sum()) / total, float(sorted_counts[40:].sum()) / total]
    torch.testing.assert_close(h.tail_mass, torch.tensor(expect))
    # FLOPs follow the mass: the adaptive head costs less than the full V-way projection
    full = GPT(small_cfg(head="full"))
    assert m.flops_per_token() < full.flops_per_token()


def test_adaptive_head_runs_under_bf16_autocast():
    """Guards: torch's AdaptiveLogSoftmaxWithLoss failing under autocast (index_copy_ of a bf16
    cluster output into its fp32 buffer), i.e. `--dtype bfloat16` crashing with head=adaptive."""
    torch.manual_seed(0)
    m = GPT(small_cfg())
    idx, y = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, loss = m(idx, y)
    loss.backward()
    assert lp.dtype == torch.float32 and torch.isfinite(loss)
    nll = -lp.gather(-1, y[..., None]).mean()
    torch.testing.assert_close(loss, nll, atol=1e-4, rtol=1e-4)


def test_adaptive_head_gradients_reach_every_cluster():
    """Guards: a tail cluster cut off from the graph (no gradient -> never learns rare tokens)."""
    torch.manual_seed(0)
    m = GPT(small_cfg())
    idx = torch.randint(0, 97, (4, 16))
    y = torch.arange(64).view(4, 16) % 97 + torch.tensor([0, 20, 40, 33]).view(4, 1)  # hits all clusters
    _, loss = m(idx, y % 97, return_logits=False)
    loss.backward()
    for name, p in m.lm_head.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("bad", [dict(tie_embeddings=True), dict(logit_softcap=15.0), dict(head_cutoffs="40,10"),
                                 dict(head_cutoffs="10,97"), dict(head="factor")])
def test_adaptive_head_config_is_validated(bad):
    """Guards: silently untied embeddings or an impossible cluster layout reaching the model build."""
    with pytest.raises(ConfigError):
        GPT(small_cfg(**bad))


def test_train_and_reload_with_the_adaptive_head(tiny_data, tmp_path, capsys):
    """Guards: a frequency order that lives only in memory (lost in the checkpoint, so a reloaded
    model samples from a permuted distribution): train a few steps, reload the run, same log-probs."""
    from tianci.checkpoint import load_run
    from tianci.cli import main
    from tianci.batches import token_counts
    run = tmp_path / "run"
    rc = main(["train", "--preset", "ci-cpu", "--data", str(tiny_data), "--out", str(run), "--block-size", "32",
               "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--batch-size", "4", "--max-iters", "3",
               "--eval-iters", "1", "--max-time", "0", "--no-tie-embeddings", "--head", "adaptive",
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    loaded = load_run(run)
    model = loaded.model
    import json
    meta = json.loads((tiny_data / "meta.json").read_text())
    counts = token_counts(tiny_data / "train.bin", meta["dtype"], meta["vocab_size"])
    assert int(model.lm_head.rank[counts.argmax()]) == 0
    assert not torch.equal(model.lm_head.order, torch.arange(meta["vocab_size"]))

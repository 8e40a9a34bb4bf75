"""Loss over the vocabulary projection, fused and chunked.

`linear_cross_entropy(h, W, targets)` == cross_entropy(h @ W.T, targets) (optionally with logit
soft-capping), but it never holds the full (N, V) logits or their gradient. At nanoGPT's CPU config
(N = 12*64 = 768 rows, V = 6104) the classic path allocates, zero-fills and frees an 18.75 MB logits
tensor, its softmax, and its gradient every step; the vocabulary projection + cross-entropy was 1/2
to 2/3 of the step. Here the rows go through in chunks that reuse one (chunk, V) buffer:

    forward:  z = h_c @ W.T;  loss_c = logsumexp(z) - z[target]
              p = softmax(z) - onehot(target)    (this *is* d loss_sum / d z)
              dh_c = p @ W;   dW += p.T @ h_c    (the gradients, computed while p is hot in cache)
    backward: scale the stored dh, dW by the incoming scalar gradient / the row count.

Computing the gradients inside forward (the trick of Liger-Kernel / Apple's cut-cross-entropy) means
the logits exist once per chunk, in a buffer that stays in cache, and the backward pass is two
multiplications. Under torch.no_grad (evaluation) the gradient work is skipped.
"""

from __future__ import annotations

import os

import torch

IGNORE_INDEX = -100  # F.cross_entropy's default: rows with this target do not count
# logits per chunk (4 MB fp32). 2^20 rather than 2^21: with the fp32 softmax the step was 4% faster on an AMX
# Xeon at batch 12 and 24 (57.4 vs 59.5, 103.1 vs 107.7 ms, interleaved), within noise on a Zen 4; with the
# bf16 one the two tie (45.9 vs 45.4, 85.2 vs 84.4); 2^19 and below lose to the extra launches
CHUNK_ELEMS = int(os.environ.get("TIANCI_CE_CHUNK", 1 << 20))
HOLD_ELEMS = 1 << 24  # at most this many bf16 gradient entries are held for one dW product (CPU, 32 MB)


def _chunk_rows(n: int, v: int) -> int:
    # a few MB of fp32 logits per chunk: few op launches, yet the chunk stays in the L3 cache
    return max(16, min(n, CHUNK_ELEMS // max(1, v)))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, softcap: float, mm_dtype, grad: bool):
        n, v = h.shape[0], weight.shape[0]
        # `grad`: grad mode where the loss was called. needs_input_grad only says the inputs require
        # grad, which they do under torch.no_grad too: without the flag an evaluation paid for the
        # gradient work it throws away (twice the forward's time on a CPU, found by profiling)
        want_h, want_w = grad and ctx.needs_input_grad[0], grad and ctx.needs_input_grad[1]
        need_grad = want_h or want_w
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        # matmuls in mm_dtype (bf16 where it pays off, e.g. CUDA), loss and accumulation in fp32
        w_mm = weight.to(mm_dtype)
        h_mm = h.to(mm_dtype)
        acc = torch.promote_types(mm_dtype, torch.float32)  # fp32, or fp64 in the gradient checks
        # training under bf16: the softmax reads the bf16 logits and writes bf16 probabilities (fp32
        # inside), which is the gradient's dtype anyway -- no fp32 copy of the logits, half the bytes
        # written. A (171, 6104) chunk on a Xeon, one thread: 0.56 ms against 1.24 for cast, fp32
        # softmax, -onehot, scale and cast back. The loss read from it (-log p_t, p_t rounded to bf16)
        # is off by < 0.2% a row, unbiased; evaluation (no grad) keeps the exact fp32 path.
        low = need_grad and softcap == 0 and mm_dtype != acc
        on_cpu = h.device.type == "cpu"
        # on a CPU the bf16 gradient rows of every chunk are kept for one dW = G.T @ h after the loop: one
        # (V, C) product and cast instead of one per chunk, each read and added into fp32 (ci-cpu-speedrun's
        # step ~6% faster on a Xeon). G is (N, V) bf16 -- 9 MB at ci-cpu's batch; above 32 MB, and on CUDA,
        # the chunks keep their own dW products and nothing (N, V) is held.
        hold = low and want_w and on_cpu and n * v <= HOLD_ELEMS
        dh = dw = None
        if want_h:
            dh = torch.empty((n, h.shape[1]), dtype=acc, device=h.device)
        if want_w and not hold:
            dw = torch.zeros(weight.shape, dtype=acc, device=h.device)
        rows = _chunk_rows(n, v)
        buf = torch.empty((rows, v), dtype=mm_dtype, device=h.device)
        G = torch.empty((n, v), dtype=mm_dtype, device=h.device) if hold else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            hc, tc = h_mm[s:e], targets[s:e]
            z = torch.mm(hc, w_mm.t(), out=buf[: e - s])
            ok = tc != IGNORE_INDEX
            tsafe = tc.clamp(min=0)[:, None]
            t = None
            if low:
                # (rows, V) bf16; with G, written straight into its rows (softmax's out= variant)
                p = torch.softmax(z, dim=1) if G is None else torch.ops.aten._softmax.out(z, 1, False, out=G[s:e])
            else:
                z = z.to(acc)  # softmax of fp32 logits: from bf16 directly (dtype=) measured 6x slower on a CPU
                if softcap > 0:
                    t = torch.tanh(z.div_(softcap))  # z now holds z / c
                    z = t.mul(softcap)
                # one fused softmax pass, not max, subtract, exp, sum and rescale as separate passes (docs/speed.md)
                p = torch.softmax(z, dim=1)  # (rows, V)
            p_t = p.gather(1, tsafe).squeeze(1).to(acc)
            # -log p is exact while p is a normal number; a row where it underflows (a logit gap of
            # ~69 nats: a diverging run) gets logsumexp(z) - z_target, exact, computed only for those rows
            # on a CPU (a host check is free there), for every row elsewhere (no host sync per chunk)
            nll = -p_t.log()
            tiny = p_t < 1e-30
            if not on_cpu:
                za = z.to(acc)
                exact = torch.logsumexp(za, dim=1) - za.gather(1, tsafe).squeeze(1)
                nll = torch.where(tiny, exact, nll)
            elif bool(tiny.any()):
                zt = z[tiny].to(acc)
                nll[tiny] = torch.logsumexp(zt, dim=1) - zt.gather(1, tsafe[tiny]).squeeze(1)
            total += (nll * ok).sum()
            if not need_grad:
                continue
            # d loss_sum / d z = softmax(z) - onehot(target), zero for ignored rows (the 1/count of the
            # mean is applied to dh and dW in backward: one multiply, not one per chunk)
            flat = torch.arange(e - s, device=p.device) * v + tsafe.squeeze(1)
            p.view(-1).index_add_(0, flat, torch.full((e - s,), -1.0, dtype=p.dtype, device=p.device))
            if t is not None:
                p.mul_(1 - t * t)  # through c * tanh(z / c)
            if not on_cpu:
                p.mul_(ok[:, None].to(p.dtype))
            elif not bool(ok.all()):
                p[~ok] = 0
            g = p.to(mm_dtype)
            if dh is not None:
                if mm_dtype == acc:
                    torch.mm(g, w_mm, out=dh[s:e])
                else:
                    dh[s:e] = g @ w_mm
            if dw is not None:  # None when G holds the rows: one product after the loop
                if mm_dtype == acc:
                    dw.addmm_(g.t(), hc)  # accumulate in place: no (V, C) temporary per chunk
                else:
                    dw += (g.t() @ hc).float()
        if G is not None:
            dw = (G.t() @ h_mm).float()
        if need_grad:
            ctx.save_for_backward(dh if dh is not None else torch.empty(0),
                                  dw if dw is not None else torch.empty(0), count)
            ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        dh, dw, count = ctx.saved_tensors
        scale = grad_out / count  # d loss_mean / d loss_sum, times the incoming gradient
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = (dh * scale).to(ctx.h_dtype)
        if ctx.needs_input_grad[1]:
            gw = (dw * scale).to(ctx.w_dtype)
        return gh, gw, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         softcap: float = 0.0) -> torch.Tensor:
    """h (N, C), weight (V, C), targets (N,) -> mean cross-entropy (nats) as a 0-d tensor.

    Equal (to float rounding) to F.cross_entropy(softcap(h @ weight.T).float(), targets), gradients
    included. Under autocast the two matmuls run in the autocast dtype, everything else in fp32."""
    dev = h.device.type
    mm_dtype = torch.promote_types(h.dtype, weight.dtype)
    if torch.is_autocast_enabled(dev):
        mm_dtype = torch.get_autocast_dtype(dev)
    with torch.autocast(device_type=dev, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, float(softcap), mm_dtype, torch.is_grad_enabled())


class AdaptiveHead(torch.nn.Module):
    """The output layer as an adaptive softmax (Grave et al. 2017, torch's AdaptiveLogSoftmaxWithLoss).

    Tokens are ranked by corpus frequency; the `cutoffs[0]` most frequent ones and one logit per
    tail cluster form the head, each tail cluster is a cheaper low-rank projection (width C / 4^i)
    run only for the rows whose target falls in it. On a Zipfian character vocabulary most targets
    are head tokens, so the V-way projection -- half of ci-cpu's FLOPs per token -- mostly shrinks to
    a cutoffs[0]-way one.

    ASM needs its classes in frequency order; the char tokenizer's ids are code-point order, so the
    head keeps the permutation as buffers (saved with the weights): `rank[id]` = frequency rank,
    `order[rank]` = id. `set_frequencies(counts)` fixes it from the training tokens (identity
    until then). `log_prob` returns the exact full distribution in token-id order, so sampling and
    the constrained decoder see the same V log-probabilities the loss was computed from."""

    def __init__(self, n_embd: int, vocab_size: int, cutoffs: list[int], div_value: float = 4.0):
        super().__init__()
        self.asm = torch.nn.AdaptiveLogSoftmaxWithLoss(n_embd, vocab_size, cutoffs, div_value=div_value,
                                                       head_bias=False)
        self.register_buffer("rank", torch.arange(vocab_size))
        self.register_buffer("order", torch.arange(vocab_size))
        # share of training targets in each tail cluster (1 = unknown: FLOP counts are an upper bound)
        self.register_buffer("tail_mass", torch.ones(len(cutoffs)))

    @torch.no_grad()
    def set_frequencies(self, counts: torch.Tensor) -> None:
        """counts (V,): occurrences of each token id; ties keep id order (deterministic)."""
        order = torch.sort(-counts.to(torch.float64), stable=True).indices.to(self.order.device)
        self.order.copy_(order)
        self.rank[order] = torch.arange(len(order), device=self.rank.device)
        c = counts.to(torch.float64)[order.cpu()]
        bounds = list(self.asm.cutoffs)  # [c0, c1, ..., V]
        total = max(float(c.sum()), 1.0)
        self.tail_mass.copy_(torch.tensor([float(c[a:b].sum()) / total for a, b in zip(bounds, bounds[1:])]))

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h (N, C), targets (N,) token ids -> mean cross-entropy (nats), 0-d."""
        assert bool((targets >= 0).all()), "the adaptive head has no ignore_index"
        # fp32 inside: torch's ASM cannot mix an autocast bf16 cluster output into its fp32 loss
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.asm(h.float(), self.rank[targets]).loss

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., C) -> full log-probabilities (..., V) in token-id order (logsumexp = 0 per row)."""
        lead = h.shape[:-1]
        with torch.autocast(device_type=h.device.type, enabled=False):
            lp = self.asm.log_prob(h.reshape(-1, h.size(-1)).float())  # (N, V) in frequency-rank order
        return lp[:, self.rank].view(*lead, -1)

    def flops_per_token(self) -> int:
        """Training matmul FLOPs per token: the head always, tail cluster i for the share of targets
        it holds (tail_mass)."""
        n = float(self.asm.head.weight.numel())
        for t, mass in zip(self.asm.tail, self.tail_mass.tolist()):
            n += sum(m.weight.numel() for m in t) * mass
        return int(6 * n)

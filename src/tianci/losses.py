"""Loss over the vocabulary projection.

`linear_cross_entropy(h, W, targets)` == cross_entropy(h @ W.T, targets). This reference version
materialises the logits; the fast path (see issue "Fast and scalable") replaces the body with a
chunked computation that never holds the full fp32 (N, V) logits or their gradient.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         softcap: float = 0.0) -> torch.Tensor:
    """h (N, C), weight (V, C), targets (N,) -> mean cross-entropy (nats) as a 0-d tensor."""
    logits = h @ weight.t()
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.float(), targets)

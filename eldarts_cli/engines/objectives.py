"""Terms of the architecture loss beyond cross-entropy: entropy regularisation (paper 2.4, eq. 6-9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config.search import EntropyConfig


def temperature(epoch: int, cfg: EntropyConfig) -> float:
    """Eq. 8: ``T(t) = max(T_min, T_init * beta^t)``."""
    return max(cfg.t_min, cfg.t_init * cfg.decay**epoch)


def edge_entropy(alpha: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """Eq. 6-7: entropy of ``softmax(alpha / T)`` for each edge (row)."""
    log_p = F.log_softmax(alpha / temp, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def entropy_regulariser(alphas: list[torch.Tensor], temp: float) -> torch.Tensor:
    """Eq. 9's sum over every edge of both cell types."""
    return sum(edge_entropy(a, temp).sum() for a in alphas)

"""Terms of the architecture loss beyond cross-entropy: entropy regularisation (paper 2.4, eq. 6-9) and the
hardware cost term (hardware-aware search: ``cost:`` recipe section, ``models/cost.py``); the schedules over
epochs: the entropy term's temperature and the cosine learning rate (search and evaluation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config.search import CostConfig, EntropyConfig


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


def cost_penalty(expected: torch.Tensor, cfg: CostConfig) -> torch.Tensor:
    """The cost term's factor of the expected cost ``E`` (in the target's unit) against ``T = cfg.target``.

    ``hinge``: ``w * max(0, E/T - 1)``; ``absolute``: ``w * |E/T - 1|`` (TF-NAS);
    ``linear``: ``w * E/T``; ``log_ratio``: ``w * ((log E / log T)^beta - 1)``,
    which :func:`cost_term` multiplies by the cross-entropy, so that the loss is
    ``CE * (1 + w * ((log E / log T)^beta - 1))``: ProxylessNAS' and FBNet's
    ``CE * (log E / log T)^beta`` at ``w = 1``. ``E`` below 1 (far under a
    target above 1) counts as 1, where the log form would change sign.
    """
    ratio = expected / cfg.target
    if cfg.form == "hinge":
        return cfg.weight * torch.clamp(ratio - 1, min=0)
    if cfg.form == "absolute":
        return cfg.weight * torch.abs(ratio - 1)
    if cfg.form == "linear":
        return cfg.weight * ratio
    log_ratio = torch.log(torch.clamp(expected, min=1.0)) / math.log(cfg.target)
    return cfg.weight * (log_ratio.pow(cfg.beta) - 1)


def cost_term(cross_entropy: torch.Tensor, expected: torch.Tensor, cfg: CostConfig) -> torch.Tensor:
    """What the cost adds to the architecture loss (in the loss's dtype)."""
    penalty = cost_penalty(expected, cfg)
    if cfg.form == "log_ratio":
        penalty = penalty * cross_entropy.to(penalty.dtype)
    return penalty.to(cross_entropy.dtype)


def timm_cosine(optimizer: torch.optim.Optimizer, epochs: int, lr_min: float, **kwargs):
    """timm's ``CosineLRScheduler`` over ``epochs`` (``kwargs``: its warm-up settings), without the line timm logs
    for a one-epoch schedule ("will have no effect": true, and no news to someone who asked for one epoch)."""
    from timm.scheduler import CosineLRScheduler

    return quiet_timm(CosineLRScheduler, optimizer, t_initial=epochs, lr_min=lr_min, **kwargs)


def quiet_timm(scheduler: type, optimizer: torch.optim.Optimizer, **kwargs):
    """``scheduler(optimizer, **kwargs)`` of timm's, without the warning its module logs for a one-epoch schedule
    (timm's cosine and polynomial schedulers say "Cosine annealing scheduler will have no effect")."""
    import logging

    logger = logging.getLogger(scheduler.__module__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return scheduler(optimizer, **kwargs)
    finally:
        logger.setLevel(level)

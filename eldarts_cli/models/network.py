"""Evaluation networks: a discovered cell stacked and trained from scratch (paper sections 3.2-3.3).

As in DARTS, every normal cell and every reduction cell of the network uses
the same genotype; the channel and reduction plan comes from
``cells.plan_cells``, the same planning the supernet uses, and each edge holds
the one op the genotype names, built by the shared op factory
(``spec.build(channels, stride, affine=True)``).

* ``cifar``: a 3x3 stem of ``3 * channels`` (section 3.2: 20 cells, C=36),
  auxiliary head after the cell at 2/3 of the depth.
* ``imagenet``: three stride-2 3x3 convs (input /8) and the first cell
  reducing its ``s_{k-2}`` input (section 3.3, mobile setting: 14 cells,
  C=48, 224x224).
* ``nb201``: NAS-Bench-201's network for its cells (arch strings), from
  :mod:`eldarts_cli.models.nb201`.

Drop path (scheduled by the training loop through ``drop_path_prob``) drops
a whole edge output per sample, except on identity edges, as DARTS does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CellPlan, plan_cells, reduction_layers
from ..core.errors import GenotypeError, RecipeError
from .genotypes import Genotype
from .nb201 import NB201Genotype, build_nb201
from .norm import BatchNorm2d
from .ops import OPS, FactorizedReduce, ReLUConvBN, without_leading_relu
from ..core.registry import Registry

NetworkBuilder = Callable[..., nn.Module]
NETWORKS: Registry[NetworkBuilder] = Registry("network")


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of an edge output with probability ``drop_prob``, rescaling the rest."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * (mask / keep)


class Cell(nn.Module):
    """One discrete cell: two ``(op, source)`` edges per node, outputs of ``concat`` joined."""

    def __init__(self, genotype: Genotype, plan: CellPlan):
        super().__init__()
        c = plan.channels
        edges, self.concat = genotype.cell(plan.reduction)
        self.reduction = plan.reduction
        if plan.reduction_prev:
            self.preprocess0 = FactorizedReduce(plan.c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(plan.c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(plan.c_prev, c, 1, 1, 0)
        self.sources = [source for _, source in edges]
        self.ops = nn.ModuleList(
            OPS.get(name).build(c, 2 if plan.reduction and source < 2 else 1, True) for name, source in edges
        )
        # Drop path skips identity edges (DARTS): dropping them would only add noise to a skip.
        self.droppable = [not isinstance(op, nn.Identity) for op in self.ops]
        # Each op and preprocessing without its leading ReLU (the same layers, unregistered): a state read
        # by several ReLU-first ops is rectified once (ops.without_leading_relu).
        self._tails = [without_leading_relu(op) for op in self.ops]
        self._pre_tails = (without_leading_relu(self.preprocess0), without_leading_relu(self.preprocess1))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0,
                rectified: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``rectified``: ``relu(s0), relu(s1)`` when the caller has them (a cell output feeds two cells)."""
        r0, r1 = rectified if rectified is not None else (F.relu(s0), F.relu(s1))
        states = [self._pre_tails[0](r0), self._pre_tails[1](r1)]
        relus: dict[int, torch.Tensor] = {}
        drop = self.training and drop_prob > 0.0
        for first in range(0, len(self.ops), 2):
            node = None
            for e in (first, first + 1):
                source, tail = self.sources[e], self._tails[e]
                if tail is None:
                    h = self.ops[e](states[source])
                else:
                    if source not in relus:
                        relus[source] = F.relu(states[source])
                    h = tail(relus[source])
                if drop and self.droppable[e]:
                    h = drop_path(h, drop_prob)
                node = h if node is None else node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 map after the cell at 2/3 of the depth (DARTS)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(channels, 128, 1, bias=False),
            BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_aux_features(self.features, x))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 7x7 map (DARTS; no BatchNorm after the 2x2 conv, as in its released code)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),  # 7x7 -> 2x2
            nn.Conv2d(channels, 128, 1, bias=False),
            BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_aux_features(self.features, x))


def _aux_features(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    # The paper's input sizes give a 1x1 map; inputs the 5x5 pooling would leave under the 2x2 conv's 2x2 (tests,
    # quick recipes, and 28x28 MNIST's 7x7 map in the CIFAR head) are pooled to 2x2 instead, larger ones are
    # averaged, so any input size trains.
    pool = features[1]
    if (min(x.shape[-2:]) - pool.kernel_size) // pool.stride + 1 < 2:
        x = features[0](x)
        x = F.adaptive_avg_pool2d(x, 2)
        x = features[2:](x)
    else:
        x = features(x)
    if x.shape[-1] != 1 or x.shape[-2] != 1:
        x = F.adaptive_avg_pool2d(x, 1)
    return torch.flatten(x, 1)


class EvalNetwork(nn.Module):
    """Stem, a stack of cells of one genotype, global pooling, classifier (and an auxiliary head).

    ``forward`` returns logits, or ``(logits, aux_logits)`` in training mode with an
    auxiliary head. ``drop_path_prob`` is set by the training loop each epoch.
    """

    def __init__(
        self, *, genotype: Genotype, stem: nn.Module, plans: list[CellPlan], num_classes: int, aux_head: type | None
    ):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = 0.0
        self.stem = stem
        self.cells = nn.ModuleList(Cell(genotype, plan) for plan in plans)
        self.aux_index = reduction_layers(len(plans))[1]
        self.auxiliary_head = aux_head(plans[self.aux_index].c_out, num_classes) if aux_head else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(plans[-1].c_out, num_classes)

    def stem_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s

    def forward(self, x: torch.Tensor):
        s0, s1 = self.stem_states(x)
        r1 = F.relu(s1)
        r0 = r1 if s0 is s1 else F.relu(s0)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            # every cell output is read, rectified, by the next two cells: rectify it once
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob, rectified=(r0, r1))
            r0, r1 = r1, (F.relu(s1) if i + 1 < len(self.cells) else None)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        if aux_logits is not None:
            return logits, aux_logits
        return logits


class ImageNetStem(nn.Module):
    """Three stride-2 3x3 convs; the cell stack reads ``stem0`` (input /4) and ``stem1`` (input /8)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1, bias=False),
            BatchNorm2d(channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
            BatchNorm2d(channels),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


class NetworkImageNet(EvalNetwork):
    def stem_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stem(x)


def cell_multiplier(genotype: Genotype) -> int:
    """Channels of a cell output, in units of node channels: the number of concatenated states."""
    normal, reduce = len(genotype.normal_concat), len(genotype.reduce_concat)
    if normal != reduce:
        raise GenotypeError(
            f"normal_concat has {normal} states and reduce_concat {reduce}: evaluation networks "
            "need both cells to output the same number of states"
        )
    return normal


def _check_darts_genotype(genotype) -> None:
    if isinstance(genotype, NB201Genotype):
        raise GenotypeError(
            f"{genotype.arch} is a cell of the NAS-Bench-201 kind (an arch string): it trains in the nb201 network "
            "(recipes/eval-nb201-cifar10.yaml, or --set network.kind=nb201)"
        )


def _check_depth(layers: int) -> None:
    if layers < 3:
        raise GenotypeError(f"an evaluation network needs at least 3 cells (two of them reductions), got {layers}")


@NETWORKS.register("cifar")
def build_cifar(
    *,
    genotype: Genotype,
    num_classes: int = 10,
    channels: int = 36,
    layers: int = 20,
    auxiliary: bool = True,
    in_channels: int = 3,
    stem_multiplier: int = 3,
) -> EvalNetwork:
    """DARTS' CIFAR network (paper section 3.2: 20 cells, C=36, auxiliary head)."""
    _check_darts_genotype(genotype)
    _check_depth(layers)
    stem_channels = stem_multiplier * channels
    stem = nn.Sequential(
        nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False), BatchNorm2d(stem_channels)
    )
    plans = plan_cells(layers, channels, stem_channels, cell_multiplier(genotype))
    return EvalNetwork(
        genotype=genotype,
        stem=stem,
        plans=plans,
        num_classes=num_classes,
        aux_head=AuxiliaryHeadCIFAR if auxiliary else None,
    )


@NETWORKS.register("imagenet")
def build_imagenet(
    *,
    genotype: Genotype,
    num_classes: int = 1000,
    channels: int = 48,
    layers: int = 14,
    auxiliary: bool = True,
    in_channels: int = 3,
) -> EvalNetwork:
    """DARTS' ImageNet mobile-setting network (paper section 3.3: 14 cells, C=48, 224x224)."""
    _check_darts_genotype(genotype)
    _check_depth(layers)
    if channels % 2:  # (a ValueError of FactorizedReduce's, as a traceback)
        raise RecipeError(f"the imagenet network needs an even channel count (its first cell halves its stem's "
                          f"maps with two convolutions of half the channels each), got channels={channels}")
    plans = plan_cells(layers, channels, channels, cell_multiplier(genotype))
    # stem1 already halves stem0's output, so the first cell reduces its s_{k-2} input.
    plans[0] = dataclasses.replace(plans[0], reduction_prev=True)
    return NetworkImageNet(
        genotype=genotype,
        stem=ImageNetStem(in_channels, channels),
        plans=plans,
        num_classes=num_classes,
        aux_head=AuxiliaryHeadImageNet if auxiliary else None,
    )


NETWORKS.register("nb201", build_nb201)


def build_network(name: str, **kwargs) -> nn.Module:
    return NETWORKS.get(name)(**kwargs)

"""The NAS-Bench-201 search network: EL-DARTS' supernet techniques on NAS-Bench-201's cell.

The cell (:mod:`eldarts_cli.models.nb201`) has one input and three nodes;
each of its 6 edges is a mixed operation (paper eq. 1) and a node sums all
its incoming edges. Everything EL-DARTS adds applies as in the DARTS cell
and stays switchable:

* partial channels (section 2.2.2): the first (or, ``sampling: random``, a
  per-mini-batch random) ``C / K`` channels go through the ops, the rest
  bypass them, then a channel shuffle;
* DCSS edge coefficients (eq. 3-5): a node's edges weighted by the softmax
  of their coefficients over that node's incoming edges (node 1 has one
  edge, whose weight is therefore 1);
* entropy regularisation and first/second order live in the engine and
  work on :meth:`NB201Supernet.alphas` as on the DARTS supernet's.

As in NAS-Bench-201's DARTS search (its ``TinyNetworkDarts``), one
``(6, ops)`` architecture matrix is shared by all ``3N`` cells; the cell
ops are non-affine and pooling has no BatchNorm; stem, residual reduction
blocks and the final BN-ReLU are the evaluation network's.

:class:`NB201SearchCell` is the fused cell (the DARTS cell's machinery with
one input); :class:`NB201ReferenceCell` the same cell edge by edge, which
``tests/test_nb201.py`` checks it against.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CellPlan, num_edges
from .norm import BatchNorm2d
from .nb201 import NB201_NODES, NB201Genotype, ResNetBasicblock, derive_nb201, stage_plan
from .ops import gradient_in_layout
from .reference import ReferenceCell
from .supernet import ArchWeights, SearchCell, SearchCellBase, init_edge_coefficients, node_softmax


class _NB201Kind:
    """NAS-Bench-201's cell kind: one input, no input preprocessing, pooling without BatchNorm."""

    inputs = 1
    pool_bn = False
    shares_rectified = False

    def build_inputs(self, plan: CellPlan) -> None:
        pass

    def input_states(self, s0: torch.Tensor, s1: torch.Tensor, r0=None, r1=None) -> list[torch.Tensor]:
        return [s1]


class NB201SearchCell(_NB201Kind, SearchCell):
    """The fused NAS-Bench-201 search cell: per state, each op once for all edges that leave it."""


class NB201ReferenceCell(_NB201Kind, ReferenceCell):
    """The NAS-Bench-201 search cell as one :class:`~eldarts_cli.models.reference.MixedOp` per edge."""


def _plan(channels: int) -> CellPlan:
    return CellPlan(0, False, False, channels, channels, channels, channels)


class NB201Supernet(nn.Module):
    """The search network of the ``nb201`` space; the same interface as :class:`~.supernet.Supernet`
    with one cell type (``alpha_reduce`` and ``edge_reduce`` are ``None``).

    ``layers`` counts the search cells: three stages of ``layers / 3`` (the benchmark's N=5 is 15).
    """

    cell_class: type[nn.Module] = NB201SearchCell

    def __init__(
        self,
        *,
        ops: Sequence[str],
        num_classes: int,
        in_channels: int = 3,
        channels: int = 16,
        layers: int = 15,
        nodes: int = NB201_NODES,
        partial_channels: int = 1,
        edge_coefficients: bool = False,
        edge_init: tuple[str, float, float] = ("uniform", 0.4, 0.6),
        alpha_init_std: float = 1e-3,
    ):
        super().__init__()
        self.ops = list(ops)
        self.nodes, self.multiplier = nodes, 1
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), BatchNorm2d(channels))
        blocks, c_prev = [], channels
        for reduction, c in stage_plan(layers, channels):
            blocks.append(ResNetBasicblock(c_prev, c, 2) if reduction else self.cell_class(_plan(c), self.ops, nodes,
                                                                                          partial_channels))
            c_prev = c
        self.cells = nn.ModuleList(blocks)
        self.reductions = [isinstance(b, ResNetBasicblock) for b in blocks]
        self.lastact = nn.Sequential(BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

        edges = num_edges(nodes, inputs=1)
        self.alpha_normal = nn.Parameter(alpha_init_std * torch.randn(edges, len(self.ops)))
        self.alpha_reduce = None
        self.edge_reduce = None
        if edge_coefficients:
            self.edge_normal = nn.Parameter(init_edge_coefficients(edges, edge_init))
        else:
            self.edge_normal = None

    # -- parameter groups ---------------------------------------------------
    def alphas(self) -> list[nn.Parameter]:
        return [self.alpha_normal]

    def edge_parameters(self) -> list[nn.Parameter]:
        return [] if self.edge_normal is None else [self.edge_normal]

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.alphas() + self.edge_parameters()

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    @property
    def search_cells(self) -> list[SearchCellBase]:
        return [b for b in self.cells if isinstance(b, SearchCellBase)]

    # -- architecture distributions -----------------------------------------
    def op_weights(self) -> tuple[torch.Tensor, None]:
        return F.softmax(self.alpha_normal, dim=-1), None

    def edge_weights(self) -> tuple[Optional[torch.Tensor], None]:
        if self.edge_normal is None:
            return None, None
        return node_softmax(self.edge_normal, self.nodes, inputs=1), None

    def arch_weights(self) -> ArchWeights:
        return ArchWeights(*self.op_weights(), *self.edge_weights())

    def sample_channels(self, generator: Optional[torch.Generator]) -> None:
        for cell in self.search_cells:
            channels = cell.op_channels * cell.partial_channels
            cell.set_channel_order(None if generator is None else torch.randperm(channels, generator=generator))

    def forward(self, x: torch.Tensor, detach_arch: bool = False, weights: Optional[ArchWeights] = None) -> torch.Tensor:
        op_w, _, edge_w, _ = weights if weights is not None else self.arch_weights()
        if detach_arch:
            op_w = op_w.detach()
            edge_w = None if edge_w is None else edge_w.detach()
        x = self.stem(x)
        for block in self.cells:
            x = block(x, x, op_w, edge_w) if isinstance(block, SearchCellBase) else block(x)
        return self.classifier(torch.flatten(self.global_pool(gradient_in_layout(self.lastact(x))), 1))

    @torch.no_grad()
    def genotype(self) -> NB201Genotype:
        return derive_nb201(self.op_weights()[0], self.ops, self.nodes)


class NB201ReferenceSupernet(NB201Supernet):
    """:class:`NB201Supernet` with :class:`NB201ReferenceCell` cells; same arguments, same parameters."""

    cell_class = NB201ReferenceCell

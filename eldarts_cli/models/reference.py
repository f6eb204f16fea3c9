"""Readable reference forms: the edge-by-edge search cell (checked against the fused one), the
plain DARTS-style forward of an evaluation network (checked against its shared-ReLU forward) and
its modules swapped for the public DARTS code's (``with_public_modules``).

Paper eq. 1 (mixed operation), section 2.2.2 (partial channels) and eq. 4-5
(DCSS), written the way the public DARTS/PC-DARTS code writes them: one
module per op per edge. On edge ``(i, j)``::

    x_a, x_b   = x_i[:, :C/K], x_i[:, C/K:]                  # partial channels (sampling: fixed)
    m_ij       = sum_o softmax(alpha_ij)_o * o(x_a)           # eq. 1
    edge_ij    = shuffle(concat(m_ij, x_b), K)                 # x_b max-pooled on reduction edges
    x_j        = sum_{i<j} softmax_i(gamma_ij) * edge_ij       # eq. 4-5 (DCSS); unweighted without it

With ``sampling: random`` the channels are first permuted by the cell's
sampled order ``P`` and put back afterwards:
``edge_ij = shuffle(P^-1 concat(m_ij, x_b), K)`` with ``x_a, x_b`` taken from
``x_i[:, P]``.

Every op is computed, ``none`` included, as in the public code.
:class:`eldarts_cli.models.supernet.SearchCell` computes the same function
with fewer, larger kernels; ``tests/test_supernet.py`` checks outputs and
architecture gradients of the two equal, and ``bench/bench_search.py`` times
this module as the baseline of the fused one.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import norm, ops
from .cells import CellPlan, edge_index
from .ops import OPS, search_op
from .network import drop_path
from .supernet import SearchCellBase, Supernet, channel_shuffle


class MixedOp(nn.Module):
    """Eq. 1 on one edge, on the first ``C / K`` channels; the rest bypass the ops."""

    def __init__(self, ops: Sequence[str], channels: int, stride: int, partial_channels: int, pool_bn: bool = True):
        super().__init__()
        self.stride = stride
        self.partial_channels = partial_channels
        self.op_channels = channels // partial_channels
        self.ops = nn.ModuleList(search_op(OPS.get(name), self.op_channels, stride, pool_bn, plain=True)
                                 for name in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        k = self.partial_channels
        if k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        if order is not None:  # sampling: random
            x = x[:, order]
        searched, bypass = x[:, : self.op_channels], x[:, self.op_channels :]
        mixed = sum(w * op(searched) for w, op in zip(weights, self.ops))
        if self.stride == 2:
            bypass = F.max_pool2d(bypass, 2, 2)
        out = torch.cat([mixed, bypass], dim=1)
        if order is not None:
            out = out[:, torch.argsort(order)]
        return channel_shuffle(out, k)


class ReferenceCell(SearchCellBase):
    """A search cell as a list of :class:`MixedOp` edges, in DARTS' edge order (``cells.edge_index``)."""

    plain = True

    def __init__(self, plan: CellPlan, ops: Sequence[str], nodes: int, partial_channels: int):
        super().__init__(plan, nodes, partial_channels)
        self.edges = nn.ModuleList(
            MixedOp(ops, plan.channels, self.edge_stride(source), partial_channels, self.pool_bn)
            for _, source in edge_index(nodes, self.inputs)
        )

    def forward(self, s0, s1, op_weights: torch.Tensor, edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = self.input_states(s0, s1)
        row = 0
        for node in range(self.nodes):
            total = 0
            for source in range(node + self.inputs):
                out = self.edges[row](states[source], op_weights[row], self.channel_order)
                total = total + (out if edge_weights is None else edge_weights[row] * out)
                row += 1
            states.append(total)
        return torch.cat(states[-self.multiplier :], dim=1)


class ReferenceSupernet(Supernet):
    """The supernet with :class:`ReferenceCell` at every position; same arguments, same parameters."""

    cell_class = ReferenceCell


@torch.no_grad()
def copy_reference_weights(reference: ReferenceSupernet, fused: Supernet) -> None:
    """Load ``reference``'s weights, BN statistics and architecture into ``fused`` (same recipe), so both
    compute the same function (either cell kind: DARTS or NAS-Bench-201)."""
    own = {k: v for k, v in reference.state_dict().items() if ".edges." not in k}
    missing, _ = fused.load_state_dict(own, strict=False)
    assert all(".groups." in name for name in missing), missing
    for ref_cell, cell in zip(reference.cells, fused.cells):
        if not hasattr(cell, "groups"):  # not a search cell (NAS-Bench-201's reduction blocks)
            continue
        index = edge_index(cell.nodes, cell.inputs)
        for source, group in enumerate(cell.groups):
            rows = [r for r, (_, s) in enumerate(index) if s == source]
            for slot, module in zip(cell.op_slots, group):
                module.load_from([ref_cell.edges[r].ops[slot] for r in rows])


class PlainEvalForward(nn.Module):
    """An evaluation network run as DARTS' code runs it: every op with its own leading ReLU.

    :class:`eldarts_cli.models.network.Cell` rectifies each state once for all the ops that read it;
    this wrapper calls the same modules the plain way, drop path included (``tests/test_network.py``
    checks the two equal; ``bench/bench_eval.py`` times it as the baseline). The auxiliary head is left out.
    Its modules are the network's: eldarts' max pooling, stride-2 1x1 and dilated depthwise convolutions and
    BatchNorm (``ops.MaxPool3x3``, ``ops.SubsampledConv1x1``, ``ops.PixelsReadConv2d``,
    ``ops.DilatedDepthwiseConv2d``, ``norm.BatchNorm2d``), faster than DARTS' on CPU input, unless the network
    went through :func:`with_public_modules` first.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        s0, s1 = net.stem_states(x)
        for cell in net.cells:
            states = [cell.preprocess0(s0), cell.preprocess1(s1)]
            for first in range(0, len(cell.ops), 2):
                node = 0
                for e in (first, first + 1):
                    h = cell.ops[e](states[cell.sources[e]])
                    if self.training and net.drop_path_prob > 0 and cell.droppable[e]:
                        h = drop_path(h, net.drop_path_prob)
                    node = node + h
                states.append(node)
            s0, s1 = s1, torch.cat([states[i] for i in cell.concat], dim=1)
        return net.classifier(torch.flatten(net.global_pooling(s1), 1))


#: eldarts' subclasses of PyTorch modules (same parameters, buffers and function, faster kernels) and the
#: PyTorch class the public DARTS code uses in their place.
PUBLIC_CLASSES: dict[type, type] = {
    ops.MaxPool3x3: nn.MaxPool2d,
    ops.AvgPool3x3: nn.AvgPool2d,
    ops.SubsampledConv1x1: nn.Conv2d,
    ops.PixelsReadConv2d: nn.Conv2d,
    ops.DilatedDepthwiseConv2d: nn.Conv2d,
    norm.BatchNorm2d: nn.BatchNorm2d,
}


def with_public_modules(network: nn.Module) -> nn.Module:
    """A copy of ``network`` built from the modules the public DARTS code uses: each of eldarts' faster
    subclasses (``PUBLIC_CLASSES``) becomes the PyTorch class it derives from, and ``FactorizedReduce`` runs its
    stride-2 convolutions as ``nn.Conv2d`` on the shifted input (``plain``). Same parameters, buffers and
    function (``tests/test_network.py``); ``bench/bench_eval.py`` times it, run by :class:`PlainEvalForward`, as
    the public code's evaluation network."""
    public = copy.deepcopy(network)
    for module in public.modules():
        if isinstance(module, ops.FactorizedReduce):
            module.plain = True
        if type(module) in PUBLIC_CLASSES:
            module.__class__ = PUBLIC_CLASSES[type(module)]
    return public

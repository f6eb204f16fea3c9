"""The EL-DARTS supernet (paper sections 2.1-2.3, Figure 2).

Each cell edge is a mixed operation (eq. 1) applied to a partial-channel
slice of its input (section 2.2.2, PC-DARTS): the first ``C / K`` channels go
through the candidate ops, the rest bypass them (max-pooled on reduction
edges), the two parts are concatenated and channel-shuffled with ``K``
groups. A node sums its incoming edges weighted by the softmax, over the
node's incoming edges, of learnable edge coefficients (DCSS, eq. 3-5); with
DCSS off the edges are summed unweighted (DARTS).

Architecture weights (``alpha_*``) and edge coefficients (``edge_*``) are
``nn.Parameter``s of the module: they live in every ``state_dict`` and
checkpoint, and move with the module across devices and under DDP.

Speed: edges leaving one state read the same input, so :class:`SearchCell`
runs all of them per op at once (see ``ops.grouped_op``). The result is the
same function as the readable edge-by-edge form of eq. 1 and 5 in
:mod:`eldarts_cli.models.reference` (one module per op per edge, as the public
DARTS/PC-DARTS code has it); ``tests/test_supernet.py`` checks the two equal,
outputs and architecture gradients.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CellPlan, edge_index, num_edges, plan_cells
from .genotypes import Genotype, derive_genotype
from .ops import OPS, FactorizedReduce, ReLUConvBN, grouped_op, is_channels_last


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS' channel shuffle; keeps the memory format (a channels_last input stays channels_last)."""
    n, c, h, w = x.shape
    if is_channels_last(x):
        # shuffle the innermost (channel) axis of the NHWC storage, so the result is NHWC too
        nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
        return nhwc.permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_concat(searched: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    """``channel_shuffle(cat([searched, bypass]), groups)`` written as one copy instead of two.

    After the shuffle, channel ``j * K + g`` is ``searched[j]`` for ``g = 0`` and
    ``bypass[(g - 1) * C / K + j]`` otherwise.
    """
    n, c, h, w = searched.shape
    if searched.stride(1) == 1 and c > 1:  # channels innermost: NHWC order
        # build it in the NHWC storage order, so the result stays channels_last
        s = searched.permute(0, 2, 3, 1).unsqueeze(-1)  # (N, H, W, C/K, 1)
        b = bypass.permute(0, 2, 3, 1).reshape(n, h, w, groups - 1, c).transpose(3, 4)  # (N, H, W, C/K, K-1)
        return torch.cat([s, b], dim=-1).reshape(n, h, w, c * groups).permute(0, 3, 1, 2)
    b = bypass.reshape(n, groups - 1, c, h, w).transpose(1, 2)  # (N, C/K, K-1, H, W)
    return torch.cat([searched.unsqueeze(2), b], dim=2).view(n, c * groups, h, w)


def node_softmax(coefficients: torch.Tensor, nodes: int) -> torch.Tensor:
    """Softmax of edge coefficients over each node's incoming edges (eq. 4)."""
    parts, start = [], 0
    for node in range(nodes):
        count = node + 2
        parts.append(F.softmax(coefficients[start : start + count], dim=-1))
        start += count
    return torch.cat(parts)


class SearchCellBase(nn.Module):
    """What every search cell has: the two input preprocessings and the cell's sizes.

    Subclasses place the mixed operations: :class:`SearchCell` (fused) and
    ``reference.ReferenceCell`` (edge by edge).
    """

    def __init__(self, plan: CellPlan, nodes: int, partial_channels: int):
        super().__init__()
        c = plan.channels
        self.reduction = plan.reduction
        self.nodes = nodes
        self.multiplier = plan.c_out // c
        self.partial_channels = partial_channels
        self.op_channels = c // partial_channels
        if plan.reduction_prev:
            self.preprocess0 = FactorizedReduce(plan.c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(plan.c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(plan.c_prev, c, 1, 1, 0, affine=False)

    def edge_stride(self, source: int) -> int:
        """Edges leaving the two cell inputs reduce the resolution in a reduction cell."""
        return 2 if self.reduction and source < 2 else 1


class SearchCell(SearchCellBase):
    """The fused search cell: per source state, each op once for all the edges that leave it."""

    def __init__(self, plan: CellPlan, ops: Sequence[str], nodes: int, partial_channels: int):
        super().__init__(plan, nodes, partial_channels)
        specs = [OPS.get(name) for name in ops]
        self.op_slots = [i for i, spec in enumerate(specs) if not spec.zero]
        index = edge_index(nodes)
        self.groups = nn.ModuleList()
        self.targets: list[list[int]] = []
        for source in range(nodes + 1):  # the last node feeds no edge
            rows = [r for r, (_, src) in enumerate(index) if src == source]
            self.targets.append([index[r][0] for r in rows])
            self.register_buffer(f"rows_{source}", torch.tensor(rows), persistent=False)
            stride = self.edge_stride(source)
            self.groups.append(
                nn.ModuleList(grouped_op(specs[i], self.op_channels, stride, len(rows)) for i in self.op_slots)
            )

    def forward(self, s0, s1, op_weights: torch.Tensor, edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        mixed_sum: list[torch.Tensor | None] = [None] * self.nodes
        bypass_sum: list[torch.Tensor | None] = [None] * self.nodes
        partial = self.partial_channels > 1
        # In NHWC the searched slice is copied to a dense tensor (1/K of the state): the ops then keep NHWC
        # throughout, forward and backward, instead of falling back to NCHW on a strided view.
        layout = torch.channels_last if is_channels_last(states[1]) else None
        # DCSS: an edge's weight multiplies all its ops, so it is folded into the (edges x ops) matrix
        # rather than applied to feature maps (eq. 5)
        weights = op_weights if edge_weights is None else op_weights * edge_weights[:, None]
        for source in range(self.nodes + 1):
            if source >= 2:
                states.append(self._node(mixed_sum[source - 2], bypass_sum[source - 2]))
            x = states[source]
            rows = getattr(self, f"rows_{source}")
            targets = self.targets[source]
            w = weights.index_select(0, rows)
            # split, not slicing: its backward joins the two gradients with one cat that keeps NHWC
            inputs, rest = x.split([self.op_channels, x.shape[1] - self.op_channels], dim=1) if partial else (x, None)
            if layout is not None and not is_channels_last(inputs):
                inputs = inputs.contiguous(memory_format=layout)
            for slot, module in zip(self.op_slots, self.groups[source]):
                module.mix(inputs, w[:, slot], mixed_sum, targets)
            if not self.op_slots:  # a space of 'none' alone: the edges add zeros
                stride = self.edge_stride(source)
                zero = inputs[:, :, ::stride, ::stride].mul(0.0)
                for node in targets:
                    mixed_sum[node] = zero if mixed_sum[node] is None else mixed_sum[node] + zero
            bypass = None
            if partial:
                bypass = rest
                if self.edge_stride(source) == 2:
                    bypass = F.max_pool2d(bypass, 2, 2)
            ew = edge_weights.index_select(0, rows) if edge_weights is not None and partial else None
            for e, node in enumerate(targets):
                if bypass is not None:
                    if ew is None:
                        bypass_sum[node] = bypass if bypass_sum[node] is None else bypass_sum[node] + bypass
                    elif bypass_sum[node] is None:
                        bypass_sum[node] = bypass * ew[e]
                    else:
                        bypass_sum[node] = torch.addcmul(bypass_sum[node], bypass, ew[e])
        states.append(self._node(mixed_sum[-1], bypass_sum[-1]))
        return torch.cat(states[-self.multiplier :], dim=1)

    def _node(self, mixed: torch.Tensor, bypass: torch.Tensor | None) -> torch.Tensor:
        if bypass is None:
            return mixed
        return shuffle_concat(mixed, bypass, self.partial_channels)


class Supernet(nn.Module):
    """The search network: a stem, ``layers`` search cells, a linear classifier.

    ``cell_class`` is the module placed at each cell position: the fused
    :class:`SearchCell` here, the edge-by-edge reference cell in
    :class:`eldarts_cli.models.reference.ReferenceSupernet`.
    """

    cell_class: type[nn.Module] = SearchCell

    def __init__(
        self,
        *,
        ops: Sequence[str],
        num_classes: int,
        in_channels: int = 3,
        channels: int = 16,
        layers: int = 8,
        nodes: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        partial_channels: int = 1,
        edge_coefficients: bool = False,
        edge_init: tuple[str, float, float] = ("uniform", 0.4, 0.6),
        alpha_init_std: float = 1e-3,
    ):
        super().__init__()
        self.ops = list(ops)
        self.nodes, self.multiplier = nodes, multiplier
        stem_channels = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels)
        )
        plan = plan_cells(layers, channels, stem_channels, multiplier)
        self.cells = nn.ModuleList(self.cell_class(p, self.ops, nodes, partial_channels) for p in plan)
        self.reductions = [p.reduction for p in plan]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(plan[-1].c_out, num_classes)

        edges = num_edges(nodes)
        self.alpha_normal = nn.Parameter(alpha_init_std * torch.randn(edges, len(self.ops)))
        self.alpha_reduce = nn.Parameter(alpha_init_std * torch.randn(edges, len(self.ops)))
        if edge_coefficients:
            kind, a, b = edge_init
            if kind == "uniform":  # eq. 3: gamma ~ U(a, b)
                init = lambda: torch.empty(edges).uniform_(a, b)  # noqa: E731
            else:  # PC-DARTS: 1e-3 * N(0, 1)
                init = lambda: b * torch.randn(edges)  # noqa: E731
            self.edge_normal = nn.Parameter(init())
            self.edge_reduce = nn.Parameter(init())
        else:
            self.edge_normal = self.edge_reduce = None

    # -- parameter groups ---------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        params = [self.alpha_normal, self.alpha_reduce]
        if self.edge_normal is not None:
            params += [self.edge_normal, self.edge_reduce]
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- architecture distributions -----------------------------------------
    def op_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)

    def edge_weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.edge_normal is None:
            return None, None
        return node_softmax(self.edge_normal, self.nodes), node_softmax(self.edge_reduce, self.nodes)

    def forward(self, x: torch.Tensor, detach_arch: bool = False) -> torch.Tensor:
        op_normal, op_reduce = self.op_weights()
        edge_normal, edge_reduce = self.edge_weights()
        if detach_arch:  # the weight step needs no architecture gradients
            op_normal, op_reduce = op_normal.detach(), op_reduce.detach()
            if edge_normal is not None:
                edge_normal, edge_reduce = edge_normal.detach(), edge_reduce.detach()
        s0 = s1 = self.stem(x)
        for cell, reduction in zip(self.cells, self.reductions):
            if reduction:
                s0, s1 = s1, cell(s0, s1, op_reduce, edge_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, op_normal, edge_normal)
        return self.classifier(torch.flatten(self.global_pool(s1), 1))

    @torch.no_grad()
    def genotype(self) -> Genotype:
        op_normal, op_reduce = self.op_weights()
        edge_normal, edge_reduce = self.edge_weights()
        return derive_genotype(
            op_normal, op_reduce, self.ops, self.nodes, edge_normal, edge_reduce, self.multiplier
        )

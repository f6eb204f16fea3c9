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

Partial channels take the first ``C / K`` channels of a state (PC-DARTS,
``partial_channels.sampling: fixed``) or, with ``sampling: random``, a new
random ``C / K`` of them for every mini-batch (paper Algorithm 1): the engine
calls :meth:`Supernet.sample_channels` before each step, and every edge of a
cell then reads the same sampled channels (one permutation per cell), so
edges leaving one state still share their input.

Speed: edges leaving one state read the same input, so :class:`SearchCell`
runs all of them per op at once (see ``ops.grouped_op``). The result is the
same function as the readable edge-by-edge form of eq. 1 and 5 in
:mod:`eldarts_cli.models.reference` (one module per op per edge, as the public
DARTS/PC-DARTS code has it); ``tests/test_supernet.py`` checks the two equal,
outputs and architecture gradients.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CellPlan, edge_index, num_edges, plan_cells
from .genotypes import Genotype, derive_genotype
from .norm import BatchNorm2d
from .ops import (OPS, FactorizedReduce, Recomputable, ReLUConvBN, SourceSums, channels_innermost,
                  gradient_in_layout, grouped_op, is_channels_last, max_pool_2x2)


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
    if channels_innermost(searched):  # NHWC order
        if torch.is_grad_enabled():
            return _ShuffleConcatNHWC.apply(searched, bypass, groups)
        return _shuffle_concat_nhwc(searched, bypass, groups)
    b = bypass.reshape(n, groups - 1, c, h, w).transpose(1, 2)  # (N, C/K, K-1, H, W)
    return torch.cat([searched.unsqueeze(2), b], dim=2).view(n, c * groups, h, w)


def _shuffle_concat_nhwc(searched: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    # built in the NHWC storage order, so the result stays channels_last: (N, H, W, C/K, K) stacked from the
    # searched map and the K-1 bypass chunks (a stack into a fresh tensor measured 1.5-3x faster on the CPU than
    # the cat of a (..., 1) and a transposed (..., K-1) block it replaces: 32 x 16 x 32x32, K=4, 376 -> 128 us)
    n, c, h, w = searched.shape
    parts = [searched.permute(0, 2, 3, 1), *bypass.permute(0, 2, 3, 1).reshape(n, h, w, groups - 1, c).unbind(3)]
    out = torch.empty((n, h, w, c, groups), dtype=searched.dtype, device=searched.device)
    torch.stack(parts, dim=-1, out=out)
    return out.view(n, h, w, c * groups).permute(0, 3, 1, 2)


class _ShuffleConcatNHWC(torch.autograd.Function):
    """:func:`shuffle_concat` in NHWC whose backward hands both inputs dense NHWC gradients (one copy each).
    Autograd's own backward is a strided view of the gradient, every ``K``-th channel: each op of each edge
    then read it strided (multiplications by the architecture weights ran at half speed)."""

    @staticmethod
    def forward(ctx, searched, bypass, groups):
        ctx.groups = groups
        return _shuffle_concat_nhwc(searched, bypass, groups)

    @staticmethod
    def backward(ctx, grad):
        n, width, h, w = grad.shape
        k = ctx.groups
        parts = grad.permute(0, 2, 3, 1).reshape(n, h, w, width // k, k).unbind(-1)  # (views where grad is NHWC)
        searched = parts[0].contiguous().permute(0, 3, 1, 2)
        # the K-1 bypass chunks stacked (1.3-3x faster than the transposed copy it replaces: 32 x 16 x 32x32,
        # K=4, both outputs 583 -> 187 us)
        bypass = torch.stack(parts[1:], dim=3).view(n, h, w, width - width // k).permute(0, 3, 1, 2)
        return searched, bypass, None


def _gather_channels(x: torch.Tensor, index: torch.Tensor, nhwc: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    if nhwc:
        # a gather along the NHWC axis of channels with the index broadcast over the pixels (a stride-0 view)
        # writes dense NHWC; on the CPU it runs 3-9x faster than index_select on the NHWC view when the channels
        # are innermost in x (NHWC storage, or a channel slice of it, as the gradients of a cat arrive)
        return x.permute(0, 2, 3, 1).gather(3, index.expand(n, h, w, index.numel())).permute(0, 3, 1, 2)
    return x.index_select(1, index)


class _SplitChannels(torch.autograd.Function):
    """``(x[:, perm[:c]], x[:, perm[c:]])``, each dense in ``x``'s layout (two gathers); the gradient is
    :class:`_JoinChannels` with the inverse permutation."""

    @staticmethod
    def forward(ctx, x, perm, inverse, c, nhwc=None):
        ctx.perm, ctx.inverse, ctx.c = perm, inverse, c
        ctx.nhwc = channels_innermost(x) if nhwc is None else nhwc
        return _gather_channels(x, perm[:c], ctx.nhwc), _gather_channels(x, perm[c:], ctx.nhwc)

    @staticmethod
    def backward(ctx, grad_a, grad_b):  # (an unused output's gradient arrives as zeros: materialize_grads)
        return _JoinChannels.apply(grad_a, grad_b, ctx.inverse, ctx.perm, ctx.nhwc), None, None, None, None


class _JoinChannels(torch.autograd.Function):
    """``cat([a, b], 1)[:, perm]`` (one cat, one gather); the gradient is :class:`_SplitChannels` with the inverse
    permutation, so both inputs get dense gradients (a cat's backward hands out strided channel slices)."""

    @staticmethod
    def forward(ctx, a, b, perm, inverse, nhwc=None):
        ctx.perm, ctx.inverse, ctx.c = perm, inverse, a.shape[1]
        ctx.nhwc = channels_innermost(a) if nhwc is None else nhwc
        return _gather_channels(torch.cat([a, b], dim=1), perm, ctx.nhwc)

    @staticmethod
    def backward(ctx, grad):
        grad_a, grad_b = _SplitChannels.apply(grad, ctx.inverse, ctx.perm, ctx.c, ctx.nhwc)
        return grad_a, grad_b, None, None, None


def split_permuted(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor,
                   c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[:, perm]`` split after ``c`` channels, both parts dense in ``x``'s memory format; ``inverse``:
    ``argsort(perm)`` (both on ``x``'s device)."""
    return _SplitChannels.apply(x, perm, inverse, c)


def join_permuted(a: torch.Tensor, b: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``cat([a, b], 1)[:, perm]`` in ``a``'s memory format; ``inverse``: ``argsort(perm)``."""
    return _JoinChannels.apply(a, b, perm, inverse)


class ArchWeights(NamedTuple):
    """The architecture a forward pass uses: softmaxed op weights ``(edges, ops)`` and per-node softmaxed
    edge weights ``(edges,)`` (``None``: edges summed unweighted) per cell type; a search space with one
    cell type (NAS-Bench-201) has ``op_reduce = edge_reduce = None``."""

    op_normal: torch.Tensor
    op_reduce: Optional[torch.Tensor]
    edge_normal: Optional[torch.Tensor]
    edge_reduce: Optional[torch.Tensor]

    def detach(self) -> "ArchWeights":
        return ArchWeights(*(None if w is None else w.detach() for w in self))


def channel_generator(seed: int, epoch: int, step: int, phase: int) -> torch.Generator:
    """The random source of one mini-batch's partial-channel draw (``sampling: random``).

    Seeded by ``(seed, epoch, step, phase)`` alone, not by the global RNG, so a
    resumed search draws the same channels as one never interrupted. The key is taken modulo 2**63 (a seed above
    about 4.6 million overflowed ``manual_seed``'s 64 bits, a traceback; smaller seeds draw as before).
    """
    return torch.Generator().manual_seed((((seed * 1_000_003 + epoch) * 1_000_003 + step) * 4 + phase) % (1 << 63))


def node_softmax(coefficients: torch.Tensor, nodes: int, inputs: int = 2) -> torch.Tensor:
    """Softmax of edge coefficients over each node's incoming edges (eq. 4)."""
    parts, start = [], 0
    for node in range(nodes):
        count = node + inputs
        parts.append(F.softmax(coefficients[start : start + count], dim=-1))
        start += count
    return torch.cat(parts)


class SearchCellBase(Recomputable, nn.Module):
    """What every search cell has: its input states (DARTS: two preprocessed inputs), sizes, partial channels.

    Subclasses place the mixed operations: :class:`SearchCell` (fused) and
    ``reference.ReferenceCell`` (edge by edge). ``inputs`` and ``pool_bn``
    describe the cell kind: DARTS' two inputs and BatchNorm after pooling,
    or NAS-Bench-201's one input and plain pooling
    (:mod:`eldarts_cli.models.nb201_search` overrides them).
    """

    inputs = 2
    pool_bn = True
    plain = False  # the reference cell computes its FactorizedReduce as the public DARTS code does
    shares_rectified = False  # SearchCell: takes relu(s0), relu(s1) from Supernet.forward

    def __init__(self, plan: CellPlan, nodes: int, partial_channels: int):
        super().__init__()
        c = plan.channels
        self.reduction = plan.reduction
        self.nodes = nodes
        self.multiplier = plan.c_out // c
        self.partial_channels = partial_channels
        self.op_channels = c // partial_channels
        self.channel_order: Optional[torch.Tensor] = None  # sampling: random; None = the first C/K channels
        # sampling random: (split, join) permutations, each with its inverse (the gradient's gather)
        self._permutations: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
        self.build_inputs(plan)

    def build_inputs(self, plan: CellPlan) -> None:
        c = plan.channels
        if plan.reduction_prev:
            self.preprocess0 = FactorizedReduce(plan.c_prev_prev, c, affine=False, plain=self.plain)
        else:
            self.preprocess0 = ReLUConvBN(plan.c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(plan.c_prev, c, 1, 1, 0, affine=False)

    def input_states(self, s0: torch.Tensor, s1: torch.Tensor, r0: Optional[torch.Tensor] = None,
                     r1: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """The preprocessed inputs; ``r0``/``r1``: ``relu(s0)``/``relu(s1)`` when the caller has them
        (:meth:`Supernet.forward` rectifies each state once for the two cells that read it)."""
        return [self._input(self.preprocess0, s0, r0), self._input(self.preprocess1, s1, r1)]

    def _input(self, module: nn.Module, s: torch.Tensor, rectified: Optional[torch.Tensor]) -> torch.Tensor:
        if rectified is not None and isinstance(module, ReLUConvBN):
            conv, bn = module[1], module[2]
            return self.recomputed(lambda r: bn(conv(r)), rectified, owner=module)
        return self.recomputed(module, s, owner=module)

    def reads_rectified(self, index: int) -> bool:
        """Whether input ``index`` (0 or 1) is preprocessed by a ReLU-conv-BN (which can take ``relu(s)``)."""
        return isinstance(self.preprocess0 if index == 0 else self.preprocess1, ReLUConvBN)

    def edge_stride(self, source: int) -> int:
        """Edges leaving the two cell inputs reduce the resolution in a reduction cell."""
        return 2 if self.reduction and source < self.inputs else 1

    # -- partial channels (paper 2.2.2, Algorithm 1) -------------------------
    def set_channel_order(self, order: Optional[torch.Tensor]) -> None:
        """``order``: a permutation of the cell's channels whose first ``C / K`` go through the ops
        (``None``: the first ``C / K`` channels, PC-DARTS' fixed choice)."""
        self.channel_order = order
        self._permutations = None
        if order is not None:
            # the join puts the sampled channels back (argsort), then PC-DARTS' shuffle: one gather of both
            k, width = self.partial_channels, order.numel()
            shuffle = torch.arange(width).view(k, width // k).t().reshape(-1)  # channel_shuffle's sources
            join = torch.argsort(order)[shuffle]
            # moved to the device at first use, once per step
            self._permutations = [(p, torch.argsort(p)) for p in (order, join)]

    def _permutation(self, which: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        perm, inverse = self._permutations[which]
        if perm.device != device:
            perm, inverse = self._permutations[which] = (perm.to(device), inverse.to(device))
        return perm, inverse

    def split_channels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(channels through the ops, channels that bypass them)."""
        if self._permutations is not None:
            return split_permuted(x, *self._permutation(0, x.device), self.op_channels)
        # split, not slicing: its backward joins the two gradients with one cat that keeps NHWC
        return x.split([self.op_channels, x.shape[1] - self.op_channels], dim=1)

    def join_channels(self, mixed: torch.Tensor, bypass: torch.Tensor) -> torch.Tensor:
        """The sampled channels back in their places, then PC-DARTS' channel shuffle (one gather)."""
        if self._permutations is None:
            return shuffle_concat(mixed, bypass, self.partial_channels)
        return join_permuted(mixed, bypass, *self._permutation(1, mixed.device))


class SearchCell(SearchCellBase):
    """The fused search cell: per source state, each op once for all the edges that leave it."""

    shares_rectified = True  # (the reference cell rectifies in each cell, as the public code does)

    def __init__(self, plan: CellPlan, ops: Sequence[str], nodes: int, partial_channels: int):
        super().__init__(plan, nodes, partial_channels)
        specs = [OPS.get(name) for name in ops]
        self.op_slots = [i for i, spec in enumerate(specs) if not spec.zero]
        index = edge_index(nodes, self.inputs)
        self.groups = nn.ModuleList()
        self.targets: list[list[int]] = []
        for source in range(nodes + self.inputs - 1):  # the last node feeds no edge
            rows = [r for r, (_, src) in enumerate(index) if src == source]
            self.targets.append([index[r][0] for r in rows])
            assert len(set(self.targets[-1])) == len(rows), "SourceSums.flush needs one edge per target node"
            self.register_buffer(f"rows_{source}", torch.tensor(rows), persistent=False)
            stride = self.edge_stride(source)
            self.groups.append(
                nn.ModuleList(grouped_op(specs[i], self.op_channels, stride, len(rows), self.pool_bn)
                              for i in self.op_slots)
            )

    def forward(self, s0, s1, op_weights: torch.Tensor, edge_weights: torch.Tensor | None,
                r0: Optional[torch.Tensor] = None, r1: Optional[torch.Tensor] = None) -> torch.Tensor:
        states = self.input_states(s0, s1, r0, r1)
        mixed_sum: list[torch.Tensor | None] = [None] * self.nodes
        bypass_sum: list[torch.Tensor | None] = [None] * self.nodes
        partial = self.partial_channels > 1
        # In NHWC the searched slice is copied to a dense tensor (1/K of the state): the ops then keep NHWC
        # throughout, forward and backward, instead of falling back to NCHW on a strided view.
        layout = torch.channels_last if is_channels_last(states[-1]) else None
        # DCSS: an edge's weight multiplies all its ops, so it is folded into the (edges x ops) matrix
        # rather than applied to feature maps (eq. 5)
        weights = op_weights if edge_weights is None else op_weights * edge_weights[:, None]
        first_node = self.inputs  # state index of node 0
        for source in range(self.nodes + first_node - 1):
            if source >= first_node:
                states.append(self._node(mixed_sum[source - first_node], bypass_sum[source - first_node]))
            x = states[source]
            rows = getattr(self, f"rows_{source}")
            targets = self.targets[source]
            w = weights.index_select(0, rows).unbind(1)  # per op: its weights on these edges (one op, not one each)
            inputs, rest = self.split_channels(x) if partial else (x, None)
            if layout is not None and not is_channels_last(inputs):
                inputs = inputs.contiguous(memory_format=layout)
            edges = SourceSums(mixed_sum, targets, self.op_channels)
            for slot, module in zip(self.op_slots, self.groups[source]):
                module.mix(inputs, w[slot], edges)
            if not self.op_slots:  # a space of 'none' alone: the edges add zeros
                stride = self.edge_stride(source)
                edges.add_shared(inputs[:, :, ::stride, ::stride].mul(0.0))
            edges.flush()
            if partial:
                bypass = max_pool_2x2(rest) if self.edge_stride(source) == 2 else rest
                ew = edge_weights.index_select(0, rows) if edge_weights is not None else None
                bypass_edges = SourceSums(bypass_sum, targets, bypass.shape[1])
                bypass_edges.add_shared(bypass, ew)
                bypass_edges.flush()
        states.append(self._node(mixed_sum[-1], bypass_sum[-1]))
        return torch.cat(states[-self.multiplier :], dim=1)

    def _node(self, mixed: torch.Tensor, bypass: torch.Tensor | None) -> torch.Tensor:
        if bypass is None:
            return mixed
        return self.join_channels(mixed, bypass)


def init_edge_coefficients(edges: int, edge_init: tuple[str, float, float]) -> torch.Tensor:
    """Initial DCSS edge coefficients: ``("uniform", a, b)`` draws gamma ~ U(a, b) (eq. 3); otherwise
    ``b * N(0, 1)`` (PC-DARTS: b = 1e-3)."""
    kind, a, b = edge_init
    return torch.empty(edges).uniform_(a, b) if kind == "uniform" else b * torch.randn(edges)


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
            nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False), BatchNorm2d(stem_channels)
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
            self.edge_normal = nn.Parameter(init_edge_coefficients(edges, edge_init))
            self.edge_reduce = nn.Parameter(init_edge_coefficients(edges, edge_init))
        else:
            self.edge_normal = self.edge_reduce = None

    # -- parameter groups ---------------------------------------------------
    def alphas(self) -> list[nn.Parameter]:
        """The op-weight matrices, one per cell type (what eq. 9's entropy term sums over)."""
        return [self.alpha_normal, self.alpha_reduce]

    def edge_parameters(self) -> list[nn.Parameter]:
        """The DCSS edge coefficients, one vector per cell type (none without DCSS)."""
        return [] if self.edge_normal is None else [self.edge_normal, self.edge_reduce]

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

    def arch_weights(self) -> ArchWeights:
        return ArchWeights(*self.op_weights(), *self.edge_weights())

    def sample_channels(self, generator: Optional[torch.Generator]) -> None:
        """Draw each cell's partial-channel permutation from ``generator`` (``None``: the first C/K channels)."""
        for cell in self.cells:
            channels = cell.op_channels * cell.partial_channels
            order = None if generator is None else torch.randperm(channels, generator=generator)
            cell.set_channel_order(order)

    def forward(self, x: torch.Tensor, detach_arch: bool = False, weights: Optional[ArchWeights] = None) -> torch.Tensor:
        """``weights`` replaces the architecture's own (architecture selection by perturbation)."""
        op_normal, op_reduce, edge_normal, edge_reduce = weights if weights is not None else self.arch_weights()
        if detach_arch:  # the weight step needs no architecture gradients
            op_normal, op_reduce = op_normal.detach(), op_reduce.detach()
            if edge_normal is not None:
                edge_normal, edge_reduce = edge_normal.detach(), edge_reduce.detach()
        s0 = s1 = self.stem(x)
        r0 = r1 = None  # relu(s0), relu(s1), computed once for both cells that read a state
        for cell, reduction in zip(self.cells, self.reductions):
            op_w, edge_w = (op_reduce, edge_reduce) if reduction else (op_normal, edge_normal)
            if cell.shares_rectified:  # (an input preprocessed otherwise ignores its relu, see _input)
                if r1 is None and cell.reads_rectified(1):
                    r1 = F.relu(s1)
                if r0 is None and cell.reads_rectified(0):
                    r0 = r1 if s0 is s1 and r1 is not None else F.relu(s0)
                out = cell(s0, s1, op_w, edge_w, r0, r1)
            else:
                out = cell(s0, s1, op_w, edge_w)
            s0, s1, r0, r1 = s1, out, r1, None
        return self.classifier(torch.flatten(self.global_pool(gradient_in_layout(s1)), 1))

    @torch.no_grad()
    def genotype(self) -> Genotype:
        op_normal, op_reduce = self.op_weights()
        edge_normal, edge_reduce = self.edge_weights()
        return derive_genotype(
            op_normal, op_reduce, self.ops, self.nodes, edge_normal, edge_reduce, self.multiplier
        )

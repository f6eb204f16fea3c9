"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020): its cell, genotype strings and network.

A NAS-Bench-201 cell has one input (state 0) and three nodes; node ``j``
sums an edge from every earlier state, so the cell has 6 edges, each one of
``none``, ``skip_connect``, ``nor_conv_1x1``, ``nor_conv_3x3``,
``avg_pool_3x3`` (nor_conv = ReLU-Conv-BN; ``none`` adds zero). The cell
output is the last node; no edge is dropped (no top-2 rule as in DARTS).
All 15,625 such cells have published trained accuracies, which makes the
space the field's yardstick of search quality.

A cell is written as NAS-Bench-201's arch string, node by node, each edge
``op~source``::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|

:class:`NB201Genotype` holds one (validated, canonical spelling) and
:class:`NB201Network` trains it: a 3x3 stem conv with ``C`` channels and BN,
three stages of ``N`` cells at ``C``, ``2C``, ``4C`` joined by residual
reduction blocks, then BN-ReLU, global pooling and a linear classifier
(``C=16``, ``N=5`` in the benchmark). Every op comes from the shared op
factory, so the network's parameter count follows NAS-Bench-201's:
``73,306 + 243,040 * (#nor_conv_3x3) + 28,000 * (#nor_conv_1x1)`` on
CIFAR-10 (``tests/test_nb201.py`` checks the published 0.073306M and
1.531546M ends of the range).
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from ..core.errors import GenotypeError
from .cells import edge_index
from .norm import BatchNorm2d
from .ops import OPS, ReLUConvBN
from .spaces import NB201_SPACE as NB201_OPS

NB201_NODES = 3

Node = list[tuple[str, int]]


def nb201_edges(nodes: int = NB201_NODES) -> list[tuple[int, int]]:
    """``[(node, source), ...]`` with nodes numbered from 1 as in the arch string: ``1<-0, 2<-0, 2<-1, ...``."""
    return [(node + 1, source) for node, source in edge_index(nodes, inputs=1)]


def parse_arch(text: str) -> list[Node]:
    """NAS-Bench-201's arch string -> ``[[(op, source), ...] per node]``; ``ValueError`` saying what is wrong."""
    text = text.strip()
    if not text.startswith("|") or not text.endswith("|"):
        raise ValueError(f"an arch string starts and ends with '|', e.g. '|nor_conv_3x3~0|+|...|', got {text!r}")
    nodes: list[Node] = []
    for number, part in enumerate(text.split("+"), start=1):
        if not (part.startswith("|") and part.endswith("|")):
            raise ValueError(f"node {number} ('{part}') does not start and end with '|': nodes are joined as "
                             "'|...|+|...|'")
        items = [item for item in part.split("|") if item.strip()]
        if not items:
            raise ValueError(f"node {number} has no edge ('{part}')")
        edges: Node = []
        for item in items:
            op, sep, source = item.strip().partition("~")
            if not sep or not source.strip().isdigit():
                raise ValueError(f"node {number}: '{item}' is not 'op~input'")
            op, src = OPS.canonical(op.strip()), int(source)
            if not 0 <= src < number:
                raise ValueError(f"node {number} cannot take input {src}: inputs of node {number} are 0..{number - 1}")
            if any(s == src for _, s in edges):
                raise ValueError(f"node {number} takes input {src} twice")
            edges.append((op, src))
        nodes.append(edges)
    return nodes


def format_arch(nodes: Sequence[Sequence[tuple[str, int]]]) -> str:
    return "+".join("|" + "|".join(f"{op}~{source}" for op, source in node) + "|" for node in nodes)


class NB201Genotype(BaseModel):
    """A NAS-Bench-201 cell as its arch string (stored canonically); ``name`` is informational.

    ``none`` is a legal op: NAS-Bench-201 keeps it as an edge that adds zero.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    name: str | None = None

    @field_validator("arch")
    @classmethod
    def _canonical(cls, arch: str) -> str:
        # (each node's edges stay in the order given: a network's modules, and so its saved weights, follow it)
        return format_arch(parse_arch(arch))

    @classmethod
    def from_nodes(cls, nodes: Sequence[Sequence[tuple[str, int]]], name: str | None = None) -> "NB201Genotype":
        return cls(arch=format_arch(nodes), name=name)

    @property
    def cells(self) -> list[Node]:
        """``[[(op, source), ...] per node]``, nodes from 1."""
        return parse_arch(self.arch)

    @property
    def nodes(self) -> int:
        return len(self.cells)

    @property
    def edges(self) -> list[tuple[str, int, int]]:
        """``[(op, source, node), ...]`` in edge order, nodes numbered from 1."""
        return [(op, source, number) for number, node in enumerate(self.cells, start=1) for op, source in node]

    @property
    def benchmark_arch(self) -> str:
        """The arch string as NAS-Bench-201 writes it: each node's edges by input (its ``query_index_by_arch``
        matches the text)."""
        return format_arch([sorted(node, key=lambda edge: edge[1]) for node in self.cells])

    def not_in_benchmark(self) -> Optional[str]:
        """Why NAS-Bench-201 holds no accuracy for this cell, or will not find it as written (a warning for
        ``evaluate``), ``None`` if it holds it as written."""
        if self.in_benchmark:
            if self.benchmark_arch != self.arch:
                return (f"{self.arch} lists a node's edges in another order than NAS-Bench-201 writes them: it is "
                        f"the benchmark's cell {self.benchmark_arch}, the text its query_index_by_arch matches")
            return None
        return (f"{self.arch} is not a NAS-Bench-201 cell ({NB201_NODES} nodes, each taking every earlier node "
                f"once, ops {', '.join(NB201_OPS)} only): it trains, but NAS-Bench-201 holds no accuracy to compare "
                "it with")

    @property
    def in_benchmark(self) -> bool:
        """True when NAS-Bench-201 holds this cell: 3 nodes, every edge present, its five ops only."""
        cells = self.cells
        return (
            len(cells) == NB201_NODES
            and all(sorted(s for _, s in node) == list(range(i + 1)) for i, node in enumerate(cells))
            and all(op in NB201_OPS for node in cells for op, _ in node)
        )

    def count(self, op: str, reduction: bool = False) -> Optional[int]:
        """Edges with ``op``; ``None`` for ``reduction=True`` (the space has no searched reduction cell)."""
        if reduction:
            return None
        return sum(1 for name, _, _ in self.edges if name == op)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), indent=2)

    def __str__(self) -> str:
        return self.arch


def derive_nb201(op_weights: torch.Tensor, ops: Sequence[str], nodes: int = NB201_NODES) -> NB201Genotype:
    """The strongest op of every edge, ``none`` included (NAS-Bench-201's DARTS: argmax over all ops)."""
    best = op_weights.detach().float().cpu().argmax(dim=1).tolist()
    cells: list[Node] = [[] for _ in range(nodes)]
    for row, (node, source) in enumerate(nb201_edges(nodes)):
        cells[node - 1].append((ops[best[row]], source))
    return NB201Genotype.from_nodes(cells)


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


class ResNetBasicblock(nn.Module):
    """NAS-Bench-201's reduction block: two ReLU-Conv3x3-BN (the first strided) plus a shortcut.

    The stride-2 shortcut is a 2x2 average pool and a 1x1 conv (no BN, no
    ReLU); there is no ReLU after the sum.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        if stride == 2:
            self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))
        elif c_in != c_out:
            self.downsample = ReLUConvBN(c_in, c_out, 1, 1, 0)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))


class NB201Cell(nn.Module):
    """One discrete NAS-Bench-201 cell: node ``j`` sums its edges' ops; the output is the last node."""

    def __init__(self, genotype: NB201Genotype, channels: int):
        super().__init__()
        self.sources: list[list[int]] = []
        self.ops = nn.ModuleList()
        for node in genotype.cells:
            self.sources.append([source for _, source in node])
            self.ops.append(nn.ModuleList(OPS.get(op).build(channels, 1, True) for op, _ in node))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for sources, ops in zip(self.sources, self.ops):
            states.append(sum(op(states[s]) for s, op in zip(sources, ops)))
        return states[-1]


def stage_plan(layers: int, channels: int) -> list[tuple[bool, int]]:
    """``[(reduction, channels), ...]`` of the ``layers`` cells in three stages of ``layers / 3`` cells
    (C, 2C, 4C), a residual reduction block before the second and third stage."""
    if layers < 3 or layers % 3:
        raise GenotypeError(f"the nb201 network has three equal stages: layers must be a multiple of 3, got {layers}")
    per_stage = layers // 3
    plan = []
    for stage in range(3):
        if stage:
            plan.append((True, channels * 2**stage))
        plan += [(False, channels * 2**stage)] * per_stage
    return plan


class NB201Network(nn.Module):
    """NAS-Bench-201's evaluation network (its ``TinyNetwork``) with one cell in every position.

    ``layers`` counts the cells (3 stages of ``N``: the benchmark's ``N=5`` is
    ``layers=15``). ``drop_path_prob`` exists for the training loop and is
    unused: NAS-Bench-201 trains without drop path and without an auxiliary head.
    """

    def __init__(self, *, genotype: NB201Genotype, num_classes: int = 10, channels: int = 16, layers: int = 15,
                 in_channels: int = 3):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = 0.0
        self.auxiliary_head = None
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), BatchNorm2d(channels))
        blocks, c_prev = [], channels
        for reduction, c in stage_plan(layers, channels):
            blocks.append(ResNetBasicblock(c_prev, c, 2) if reduction else NB201Cell(genotype, c))
            c_prev = c
        self.cells = nn.ModuleList(blocks)
        self.lastact = nn.Sequential(BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.cells:
            x = block(x)
        return self.classifier(torch.flatten(self.global_pooling(self.lastact(x)), 1))


def build_nb201(
    *,
    genotype,
    num_classes: int = 10,
    channels: int = 16,
    layers: int = 15,
    auxiliary: bool = False,
    in_channels: int = 3,
) -> NB201Network:
    """NAS-Bench-201's network (C=16, N=5 cells per stage = 15 cells) for an arch string genotype."""
    if not isinstance(genotype, NB201Genotype):
        raise GenotypeError(
            "the nb201 network takes a NAS-Bench-201 cell (an arch string such as '|nor_conv_3x3~0|+|...|'); "
            f"{genotype.name or 'this genotype'} is a DARTS cell: use network.kind=cifar"
        )
    if auxiliary:
        raise GenotypeError("the nb201 network has no auxiliary head: set network.auxiliary=false")
    return NB201Network(genotype=genotype, num_classes=num_classes, channels=channels, layers=layers,
                        in_channels=in_channels)

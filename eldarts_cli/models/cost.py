"""The cost of the network a search would derive, and its expected value under the architecture weights.

The paper chose its search space by profiling operators (section 2.2.1,
Figure 1) and names real hardware latency in the loss as future work
(sections 4.2 and 5); this module makes
the cost of the *evaluation* network a differentiable function of the
architecture, so that the architecture loss can carry a budget (in the manner
of FBNet, ProxylessNAS and TF-NAS; the loss terms are in
``engines/objectives.py``).

The network priced is the one the derived genotype is trained as
(``models/network.py``), at the evaluation recipe's width, depth and input
size, not the search supernet and its ``C / K`` channel slice: a cell at
position ``i`` has node width ``C_i``; its edges from the two cell inputs read
resolution ``H_i`` (stride 2 in a reduction cell), its edges from nodes read
the nodes' resolution. :func:`trace_layout` reads these sizes off a probe
network built by the same builder, so they are the ones evaluation uses.

Cost of a discrete network, additive over its parts::

    cost = F + sum_cells sum_{kept edges (j, s)} c(op_{j,s}, C_i, H_{i,s}, stride_{i,s})

``F`` is the fixed part: the stem, both input preprocessings of every cell,
global pooling and the classifier (and, for latency, each cell's node sums and
output concatenation, which thop does not count); ``c`` is one op's cost at one
site (channels, resolution, stride). MACs and parameters follow
``models/sizes.py`` (thop at batch 1, auxiliary head excluded); latency comes
from a cost table that ``eldarts profile-ops --table`` measured.

The expected cost, differentiable in ``alpha`` and the DCSS edge coefficients::

    E = F + sum_{cell type t} sum_e q_e * sum_o p'_{e,o} * K_t[e, o]
    K_t[e, o] = sum_{cells i of type t} c(o, site(i, e))

* ``p'_e`` is ``softmax(alpha_e)`` (eq. 1's op weights) renormalised over the
  ops other than ``none``: derivation never picks ``none``, and a space with
  ``none`` would otherwise look cheaper by moving weight onto an op no derived
  network has.
* ``q_e`` is edge ``e``'s share of the two edges its node keeps. Derivation
  ranks a node's ``n`` incoming edges by strength ``s_e = max_{o != none}
  p_{e,o} * beta_e`` (``beta``: the DCSS edge weights of eq. 4, 1 without
  DCSS) and keeps two. With ``w_e = s_e / sum_node s`` (summing to 1),
  ``q = 2 w`` when ``max w <= 1/2``; otherwise the strongest edge gets
  ``q = 1`` and the others ``w_e / (1 - max w)``. That is ``q = min(1, tau w)``
  with ``tau`` set so that ``sum q = 2``: the edge coefficients scaled to the
  two edges a node keeps, none counted more than once. A node with two
  incoming edges keeps both (``q = 1, 1``); when two edges hold all the
  strength, ``q`` is their 0/1 selection, so one-hot architecture weights give
  the derived network's cost exactly (``tests/test_cost.py`` checks it against
  thop on the built network).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..core.errors import EldartsError
from .cells import edge_index
from .genotypes import Genotype
from .network import EvalNetwork, build_network
from .reference import PlainEvalForward
from .ops import OPS
from .sizes import thop_macs

#: What a cost can measure, and the unit of targets and reports.
UNITS = {"latency": "ms", "macs": "M MACs", "params": "M params"}
#: Raw MAC and parameter counts are kept as counts (exact in float64); reports divide by this.
COUNT_SCALE = {"latency": 1.0, "macs": 1e6, "params": 1e6}
#: Edges each node of a derived cell keeps (``genotypes.derive_cell``).
KEPT_EDGES = 2
#: The probe genotype's op: parameter-free and buildable at any width and stride.
_PROBE_OP = "max_pool_3x3"


class CostError(EldartsError):
    """A cost that cannot be computed: a bad table, an op or size it lacks, a network it does not know."""


# ---------------------------------------------------------------------------
# Where each op and fixed part runs in the evaluation network
# ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class OpSite:
    """An op's input in the evaluation network: channels, square resolution, stride."""

    channels: int
    resolution: int
    stride: int

    def describe(self) -> str:
        return f"C={self.channels}, {self.resolution}x{self.resolution}, stride {self.stride}"


@dataclass(frozen=True)
class CellSite:
    """One cell position: its node width, the resolution its inputs arrive at, and its nodes' resolution."""

    index: int
    reduction: bool
    channels: int
    resolution: int
    node_resolution: int

    def edge_site(self, source: int) -> OpSite:
        """Edges leaving the two cell inputs stride in a reduction cell (``Cell``: ``stride 2 if source < 2``)."""
        if source < 2:
            return OpSite(self.channels, self.resolution, 2 if self.reduction else 1)
        return OpSite(self.channels, self.node_resolution, 1)


@dataclass(frozen=True)
class FixedPart:
    """A part of the network every genotype has.

    ``kind`` is ``module`` (a submodule of the network, by its name) or
    ``glue`` (a cell's node sums and output concatenation: element-wise work
    that thop does not count, timed for latency only). ``input_shape`` is
    one image's input (batch left out).
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class NetworkLayout:
    """The evaluation network's sizes, as the cost model needs them."""

    kind: str
    channels: int
    layers: int
    nodes: int
    multiplier: int
    input_shape: tuple[int, int, int]
    num_classes: int
    cells: tuple[CellSite, ...]
    fixed: tuple[FixedPart, ...]

    def sites(self) -> list[OpSite]:
        """Every distinct op site of the network, sorted."""
        sources = (0, 2) if self.nodes > 1 else (0,)  # from a cell input; from a node (only node 1 on has one)
        return sorted({cell.edge_site(source) for cell in self.cells for source in sources})

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"{self.kind}, C={self.channels}, {self.layers} cells of {self.nodes} nodes "
                f"(multiplier {self.multiplier}), {c}x{h}x{w} input, {self.num_classes} classes")

    def signature(self) -> dict:
        """What a cost table must have been measured for (``engines/cost.py`` compares it)."""
        return {"kind": self.kind, "channels": self.channels, "layers": self.layers, "nodes": self.nodes,
                "multiplier": self.multiplier, "input": list(self.input_shape), "num_classes": self.num_classes}


def probe_genotype(nodes: int, multiplier: int) -> Genotype:
    """A genotype of the given shape whose network has every fixed part (its ops do not matter)."""
    edges = [(_PROBE_OP, source) for _ in range(nodes) for source in (0, 1)]
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    return Genotype(normal=edges, normal_concat=concat, reduce=edges, reduce_concat=concat, name="probe")


def build_layout_network(kind: str, genotype: Genotype, *, channels: int, layers: int, in_channels: int,
                         num_classes: int) -> EvalNetwork:
    """The evaluation network as the cost model prices it: no auxiliary head (``models/sizes.py``)."""
    return build_network(kind, genotype=genotype, num_classes=num_classes, channels=channels, layers=layers,
                         auxiliary=False, in_channels=in_channels)


def trace_layout(kind: str, *, channels: int, layers: int, nodes: int, multiplier: int,
                 input_shape: tuple[int, int, int], num_classes: int) -> tuple[NetworkLayout, EvalNetwork]:
    """Sizes of every cell and fixed part, read off one forward pass of a probe network.

    Returns the layout and the probe (its fixed parts are the modules a cost
    table times). The probe is built under ``torch.random.fork_rng`` so that
    pricing a network never changes a search's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        probe = build_layout_network(kind, probe_genotype(nodes, multiplier), channels=channels, layers=layers,
                                     in_channels=input_shape[0], num_classes=num_classes).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    outputs: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output=None):
            shapes[name] = tuple(args[0].shape[1:])
            if output is not None:
                outputs[name] = tuple(output.shape[1:])
        return hook

    module_names = ["stem"] + [f"cells.{i}.preprocess{k}" for i in range(len(probe.cells)) for k in (0, 1)]
    module_names += ["global_pooling", "classifier"]
    handles = [probe.get_submodule(name).register_forward_pre_hook(record(name)) for name in module_names]
    handles += [cell.ops[0].register_forward_hook(record(f"cells.{i}.ops.0")) for i, cell in enumerate(probe.cells)]
    try:
        with torch.no_grad():  # the plain forward calls each preprocessing and op module (hooks see them)
            PlainEvalForward(probe)(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()

    cells = []
    fixed = [FixedPart("stem", "module", shapes["stem"])]
    for i, cell in enumerate(probe.cells):
        c, h, _ = shapes[f"cells.{i}.ops.0"]
        node_c, node_h, _ = outputs[f"cells.{i}.ops.0"]
        cells.append(CellSite(i, cell.reduction, c, h, node_h))
        fixed += [FixedPart(f"cells.{i}.preprocess0", "module", shapes[f"cells.{i}.preprocess0"]),
                  FixedPart(f"cells.{i}.preprocess1", "module", shapes[f"cells.{i}.preprocess1"]),
                  FixedPart(f"cells.{i}.glue", "glue", (node_c, node_h, node_h))]
    fixed += [FixedPart("global_pooling", "module", shapes["global_pooling"]),
              FixedPart("classifier", "module", shapes["classifier"])]
    layout = NetworkLayout(kind=kind, channels=channels, layers=layers, nodes=nodes, multiplier=multiplier,
                           input_shape=tuple(input_shape), num_classes=num_classes, cells=tuple(cells),
                           fixed=tuple(fixed))
    return layout, probe


# ---------------------------------------------------------------------------
# Counted costs: MACs and parameters
# ---------------------------------------------------------------------------


def build_op(op: str, site: OpSite) -> nn.Module:
    """The op as the evaluation network builds it (affine BatchNorm)."""
    try:
        return OPS.get(op).build(site.channels, site.stride, True)
    except ValueError as error:
        raise CostError(f"op '{op}' cannot be built at {site.describe()}: {error}") from None


def counted_op_cost(metric: str, op: str, site: OpSite) -> float:
    """thop MACs (batch 1) or parameters of one op at one site."""
    if OPS.get(op).zero:
        return 0.0
    with torch.random.fork_rng(devices=[]):
        module = build_op(op, site).eval()
    if metric == "params":
        return float(sum(p.numel() for p in module.parameters()))
    return float(thop_macs(module, torch.zeros(1, site.channels, site.resolution, site.resolution)))


def counted_fixed_cost(metric: str, layout: NetworkLayout, probe: EvalNetwork) -> float:
    """thop MACs or parameters of the fixed parts (glue counts 0: thop counts modules only).

    Checked against the whole probe network: parameters must add up, or the
    network has parts this model does not know.
    """
    total = 0.0
    for part in layout.fixed:
        if part.kind != "module":
            continue
        module = probe.get_submodule(part.name)
        if metric == "params":
            total += sum(p.numel() for p in module.parameters())
        else:
            total += thop_macs(module, torch.zeros(1, *part.input_shape))
    if metric == "params":
        ops = sum(p.numel() for cell in probe.cells for p in cell.ops.parameters())
        whole = sum(p.numel() for p in probe.parameters())
        if total + ops != whole:
            raise CostError(f"the {layout.kind} network has parameters outside its stem, cells and classifier; "
                            "the cost model does not know how to price it")
    return float(total)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


def kept_edge_shares(op_weights: torch.Tensor, edge_weights: Optional[torch.Tensor], usable: torch.Tensor,
                     nodes: int) -> torch.Tensor:
    """``q_e``: each edge's share of the two edges its node keeps (module docstring), differentiable.

    ``op_weights`` is ``(edges, ops)`` (softmaxed alphas), ``edge_weights``
    ``(edges,)`` (per-node softmaxed DCSS coefficients) or ``None``;
    ``usable`` indexes the ops other than ``none``. No host synchronisation.
    """
    strength = op_weights.index_select(1, usable).amax(dim=1)
    if edge_weights is not None:
        strength = strength * edge_weights
    shares = []
    start = 0
    for node in range(nodes):
        count = node + 2
        w = strength[start : start + count]
        w = w / w.sum()
        top = w.max()
        capped = torch.where(w == top, torch.ones_like(w), w / (1 - top).clamp_min(1e-12))
        shares.append(torch.where(top <= 1 / KEPT_EDGES, KEPT_EDGES * w, capped))
        start += count
    return torch.cat(shares)


class CostModel:
    """Cost of derived networks and its expectation under architecture weights (module docstring).

    ``normal`` and ``reduce`` are ``K_t``: ``(edges, ops)`` float64 tensors of
    per-edge op costs summed over the cells of that type; ``fixed`` is ``F``.
    Costs are in raw units (MAC and parameter counts, milliseconds);
    ``scale`` divides them into the reported unit (``UNITS``).
    """

    def __init__(self, metric: str, ops: Sequence[str], nodes: int, normal: torch.Tensor, reduce: torch.Tensor,
                 fixed: float):
        self.metric = metric
        self.unit = UNITS[metric]
        self.scale = COUNT_SCALE[metric]
        self.ops = list(ops)
        self.nodes = nodes
        self.normal = normal.double()
        self.reduce = reduce.double()
        self.fixed = float(fixed)
        self.usable = torch.tensor([i for i, op in enumerate(self.ops) if not OPS.get(op).zero])

    @classmethod
    def from_costs(cls, metric: str, layout: NetworkLayout, ops: Sequence[str],
                   op_cost: Callable[[str, OpSite], float], fixed: float) -> "CostModel":
        """Sum ``op_cost(op, site)`` over the cells of each type, edge by edge."""
        index = edge_index(layout.nodes)
        cache: dict[tuple[str, OpSite], float] = {}

        def cost(op: str, site: OpSite) -> float:
            if (op, site) not in cache:
                cache[(op, site)] = 0.0 if OPS.get(op).zero else float(op_cost(op, site))
            return cache[(op, site)]

        tables = {}
        for reduction in (False, True):
            table = torch.zeros(len(index), len(ops), dtype=torch.float64)
            for cell in (c for c in layout.cells if c.reduction == reduction):
                for e, (_, source) in enumerate(index):
                    site = cell.edge_site(source)
                    for o, op in enumerate(ops):
                        table[e, o] += cost(op, site)
            tables[reduction] = table
        return cls(metric, ops, layout.nodes, tables[False], tables[True], fixed)

    @classmethod
    def counted(cls, metric: str, layout: NetworkLayout, probe: EvalNetwork, ops: Sequence[str]) -> "CostModel":
        """MACs (thop) or parameters, computed from the ops as the evaluation network builds them."""
        if metric not in ("macs", "params"):
            raise CostError(f"{metric} is measured, not counted: it needs a cost table")
        return cls.from_costs(metric, layout, ops, lambda op, site: counted_op_cost(metric, op, site),
                              counted_fixed_cost(metric, layout, probe))

    def to(self, device: torch.device) -> "CostModel":
        moved = copy.copy(self)
        moved.normal, moved.reduce = self.normal.to(device), self.reduce.to(device)
        moved.usable = self.usable.to(device)
        return moved

    # -- expectation ---------------------------------------------------------
    def _cell(self, table: torch.Tensor, op_weights: torch.Tensor, edge_weights: Optional[torch.Tensor]) -> torch.Tensor:
        op_weights = op_weights.double()
        usable = op_weights.index_select(1, self.usable)
        p = usable / usable.sum(dim=1, keepdim=True)
        per_edge = (p * table.index_select(1, self.usable)).sum(dim=1)
        shares = kept_edge_shares(op_weights, None if edge_weights is None else edge_weights.double(), self.usable,
                                  self.nodes)
        return (shares * per_edge).sum()

    def expected(self, op_normal: torch.Tensor, op_reduce: torch.Tensor, edge_normal: Optional[torch.Tensor] = None,
                 edge_reduce: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``E`` in raw units (a float64 scalar tensor with gradients to the weights given)."""
        return (self.fixed + self._cell(self.normal, op_normal, edge_normal)
                + self._cell(self.reduce, op_reduce, edge_reduce))

    def expected_of(self, supernet: nn.Module) -> torch.Tensor:
        """``E`` under a supernet's current architecture weights (``Supernet.op_weights``/``edge_weights``)."""
        op_normal, op_reduce = supernet.op_weights()
        edge_normal, edge_reduce = supernet.edge_weights()
        return self.expected(op_normal, op_reduce, edge_normal, edge_reduce)

    # -- discrete networks -----------------------------------------------------
    def of_genotype(self, genotype: Genotype) -> float:
        """The cost of ``genotype``'s evaluation network, in raw units (a sum of table entries)."""
        if genotype.nodes != self.nodes:
            raise CostError(f"the genotype has {genotype.nodes} nodes per cell; the cost model was built for {self.nodes}")
        index = {pair: e for e, pair in enumerate(edge_index(self.nodes))}
        total = self.fixed
        for table, edges in ((self.normal, genotype.normal), (self.reduce, genotype.reduce)):
            for position, (op, source) in enumerate(edges):
                if op not in self.ops:
                    raise CostError(f"op '{op}' is not priced by this cost model (it has: {', '.join(self.ops)})")
                total += float(table[index[(position // 2, source)], self.ops.index(op)])
        return total

    def bounds(self) -> tuple[float, float]:
        """The cheapest and the dearest network derivation can give, in raw units."""
        low = high = self.fixed
        for table in (self.normal, self.reduce):
            usable = table.cpu().index_select(1, self.usable.cpu())
            cheapest, dearest = usable.min(dim=1).values, usable.max(dim=1).values
            start = 0
            for node in range(self.nodes):
                count = node + 2
                low += float(cheapest[start : start + count].sort().values[:KEPT_EDGES].sum())
                high += float(dearest[start : start + count].sort(descending=True).values[:KEPT_EDGES].sum())
                start += count
        return low, high

    def report(self, raw: float) -> float:
        """A raw cost in the reported unit (ms, M MACs, M params)."""
        return raw / self.scale


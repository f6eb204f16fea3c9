"""How decided a search is: margins of its choices within one run, agreement of genotypes across runs.

A derived genotype looks equally definite whether its architecture weights
are 0.9 against 0.02 or 0.26 against 0.25. These numbers say which:

* **edge margin**: on each edge of the genotype, the chosen op's softmax
  weight minus the runner-up's, among the ops the rule chooses from (DARTS'
  cell: every op but ``none``; NAS-Bench-201: all five). In [0, 1].
* **node margin** (DARTS' cell, nodes with more than two inputs): the
  strength of the weaker kept edge minus that of the strongest dropped
  edge, strength being the rule's own (best op weight x DCSS edge weight).
  Edge weights are scaled by the node's number of inputs, so that equal
  edge weights count as 1 and node margins are in the same units as edge
  margins.
* **threshold** (``derive.margin_threshold``, default 0.05): a search whose
  median edge or node margin is below it has not decided; 0.05 is a fifth
  of the uniform weight of a 4-op edge (0.25). At initialisation every
  margin is ~0.001; a 10-epoch Fashion-MNIST search that looked finished
  ended at a median 0.019.
* **agreement** of several genotypes (seeds): over every pair of them, the
  share of kept edges (node, input) they have in common and the share of
  edges with the same op, averaged over pairs and cell types. For
  NAS-Bench-201 cells, which keep every edge, an edge "agrees" when both
  cells have it (neither has ``none`` there).
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from typing import Any, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from ..core.errors import GenotypeError
from .genotypes import AnyGenotype, Genotype
from .nb201 import NB201Genotype
from .ops import OPS

#: Default of ``derive.margin_threshold`` (softmax-weight units); see the module docstring.
MARGIN_THRESHOLD = 0.05


class Margins(BaseModel):
    """Margins of a genotype's choices (``summary.json``; cell types ``normal``/``reduce`` or ``cell``).

    ``edges[cell]`` follows the genotype's edge order; ``nodes[cell]`` has one
    entry per node (``None`` where the node keeps all its inputs).
    """

    model_config = ConfigDict(extra="allow")

    threshold: float
    edge_median: float
    node_median: Optional[float] = None
    edges: dict[str, list[float]]
    nodes: dict[str, list[Optional[float]]] = {}
    decided: bool


def _top_two_gap(values: torch.Tensor) -> float:
    if values.numel() < 2:
        return float(values.max()) if values.numel() else 0.0
    top = values.topk(2).values
    return float(top[0] - top[1])


def darts_cell_margins(op_weights: torch.Tensor, edge_weights: Optional[torch.Tensor], ops: Sequence[str],
                       nodes: int) -> tuple[list[float], list[Optional[float]]]:
    """(edge margins in ``derive_cell``'s edge order, node margins) of one DARTS cell."""
    op_weights = op_weights.detach().float().cpu()
    usable = [i for i, name in enumerate(ops) if name != "none"]
    best = op_weights[:, usable].max(dim=1).values
    strength = best.clone()
    if edge_weights is not None:
        strength = strength * edge_weights.detach().float().cpu()
    edges: list[float] = []
    node_margins: list[Optional[float]] = []
    start = 0
    for node in range(nodes):
        count = node + 2
        rows = list(range(start, start + count))
        ranked = sorted(rows, key=lambda r: -float(strength[r]))  # derive_cell's order
        # one op besides none: no op to choose, so its margin is against none, the runner-up of the softmax (it
        # was the op's weight itself, ~0.5 at the start, read as decided)
        against = usable if len(usable) > 1 else list(range(op_weights.shape[1]))
        edges += [_top_two_gap(op_weights[r, against]) for r in ranked[:2]]
        if count > 2:
            scale = count if edge_weights is not None else 1
            node_margins.append(scale * float(strength[ranked[1]] - strength[ranked[2]]))
        else:
            node_margins.append(None)
        start += count
    return edges, node_margins


def nb201_cell_margins(op_weights: torch.Tensor) -> list[float]:
    """Edge margins of a NAS-Bench-201 cell (every op choosable, ``none`` included)."""
    op_weights = op_weights.detach().float().cpu()
    return [_top_two_gap(row) for row in op_weights]


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def supernet_margins(weights, ops: Sequence[str], nodes: int, cell: str,
                     threshold: float = MARGIN_THRESHOLD) -> Margins:
    """The margins of what the magnitude rule derives from ``weights`` (an ``ArchWeights``)."""
    op_normal, op_reduce, edge_normal, edge_reduce = weights
    if cell == "nb201":
        edges = {"cell": nb201_cell_margins(op_normal)}
        node_margins: dict[str, list[Optional[float]]] = {}
    else:
        edges, node_margins = {}, {}
        for name, op_w, edge_w in (("normal", op_normal, edge_normal), ("reduce", op_reduce, edge_reduce)):
            edges[name], node_margins[name] = darts_cell_margins(op_w, edge_w, ops, nodes)
    edge_median = _median([m for values in edges.values() for m in values])
    node_median = _median([m for values in node_margins.values() for m in values])
    decided = edge_median >= threshold and (node_median is None or node_median >= threshold)
    return Margins(threshold=threshold, edge_median=edge_median, node_median=node_median, edges=edges,
                   nodes=node_margins, decided=decided)


def margin_warning(margins: Optional[Margins], method: str = "magnitude") -> Optional[str]:
    """A plain warning when the genotype rests on small margins, saying what to do; ``None`` otherwise."""
    if margins is None or margins.decided:
        return None
    small = []
    if margins.edge_median < margins.threshold:
        small.append(f"median op margin {margins.edge_median:.3f} (chosen op minus runner-up, softmax weight)")
    if margins.node_median is not None and margins.node_median < margins.threshold:
        small.append(f"median node margin {margins.node_median:.3f} (kept minus first dropped edge)")
    what = ("the genotype rests on small margins: " if method != "perturbation" else
            "the architecture weights are undecided (softmax margins of the cell the magnitude rule would derive, "
            "not of the perturbation-chosen cell saved): ")
    return (
        what + " and ".join(small) + f" below {margins.threshold:g}, "
        "so another seed may well give another cell. Treat it as undecided: search longer (search.epochs), "
        "raise arch_optim.lr, "
        + ("" if method == "perturbation" else "select by derive.method=perturbation, ")
        + "or compare seeds with `eldarts report RUN1 RUN2 ...`."
    )


def collapse_warning(genotype: AnyGenotype, cost: Optional[Any] = None, space: Optional[Sequence[str]] = None,
                     method: Optional[str] = None) -> Optional[str]:
    """A warning when every op of the (normal) cell is parameter-free, ``None`` otherwise.

    Such a cell is the failure DARTS-like searches are known for (all ``skip_connect``, or all pooling,
    at small budgets): its network learns only in its stem, reduction blocks and classifier, however
    decided the margins look. Checked on the normal cell (DARTS space) or the one cell (NAS-Bench-201).
    ``cost``: the run's hardware cost (``runs.files.HardwareCost``), if the search had a cost term: that
    term pulls towards cheap (parameter-free) ops, so its weight and target come first among the remedies.
    ``space``: the search space's ops (one without an op with parameters can give no other cell: said so, with no
    remedy of the search's); ``method``: how the cell was selected (perturbation is not suggested to its run).
    """
    if isinstance(genotype, NB201Genotype):  # one cell type
        ops = [op for op, _, _ in genotype.edges]
    else:
        ops = [op for op, _ in genotype.normal]
    if not ops or any(op in OPS and not OPS.get(op).parameter_free for op in ops):
        return None
    counts = ", ".join(f"{op} x{n}" for op, n in Counter(ops).most_common())
    if space is not None and all(op in OPS and OPS.get(op).parameter_free for op in space):
        return (f"every op of the cell is parameter-free ({counts}), as every op of the search space is "
                f"({', '.join(space)}): its network learns only outside its cells; add an op with parameters "
                "(a convolution) to search_space.ops for a cell that learns.")
    parts = ["a longer search (search.epochs, search.warmup_epochs)", "a lower arch_optim.lr"] \
        + (["derive.method=perturbation"] if method != "perturbation" else [])
    remedies = f"{', '.join(parts[:-1])} or {parts[-1]}"
    if cost is not None and cost.weight > 0:
        remedies = (f"The cost term pulls towards such ops (cost.weight {cost.weight:g}, cost.target {cost.target:.4g} "
                    f"{cost.unit}): a lower cost.weight, a higher cost.target, {remedies} may give a cell with "
                    "convolutions")
    else:
        remedies = f"{remedies[0].upper()}{remedies[1:]} may give a cell with convolutions"
    return (
        f"every op of the cell is parameter-free ({counts}): the collapse DARTS-like searches are known for at "
        f"small budgets, whose network learns only outside its cells. {remedies}; compare seeds with "
        "`eldarts report RUN1 RUN2 ...`."
    )


# ---------------------------------------------------------------------------
# Agreement across runs
# ---------------------------------------------------------------------------


class Agreement(BaseModel):
    """How much the genotypes of ``runs`` searches agree (mean over pairs; 1 = identical)."""

    runs: int
    edges: float
    ops: float


def _darts_sets(genotype: Genotype) -> list[tuple[set, set]]:
    out = []
    for edges in (genotype.normal, genotype.reduce):
        kept = {(i // 2, source) for i, (_, source) in enumerate(edges)}
        with_ops = {(i // 2, source, op) for i, (op, source) in enumerate(edges)}
        out.append((kept, with_ops))
    return out


def _pair_agreement(a: AnyGenotype, b: AnyGenotype) -> tuple[float, float]:
    if isinstance(a, NB201Genotype) != isinstance(b, NB201Genotype):
        raise GenotypeError("cannot compare a NAS-Bench-201 cell with a DARTS cell")
    if isinstance(a, NB201Genotype):
        sizes = [max(node for _, _, node in g.edges) for g in (a, b)]
        if sizes[0] != sizes[1]:
            raise GenotypeError(f"cannot compare cells of {sizes[0]} and {sizes[1]} nodes: agreement is measured "
                                "between cells of one search space")
        ea = {(node, source): op for op, source, node in a.edges}
        eb = {(node, source): op for op, source, node in b.edges}
        slots = set(ea) | set(eb)
        edges = sum((ea.get(s, "none") == "none") == (eb.get(s, "none") == "none") for s in slots) / len(slots)
        ops = sum(ea.get(s) == eb.get(s) for s in slots) / len(slots)
        return edges, ops
    if len(a.normal) != len(b.normal) or len(a.reduce) != len(b.reduce):  # another number of nodes per cell
        raise GenotypeError(f"cannot compare cells of {len(a.normal) // 2} and {len(b.normal) // 2} nodes "
                            "(network.nodes differs): agreement is measured between cells of one search space")
    edge_shares, op_shares = [], []
    for (kept_a, ops_a), (kept_b, ops_b) in zip(_darts_sets(a), _darts_sets(b)):
        size = max(len(kept_a), len(kept_b))
        edge_shares.append(len(kept_a & kept_b) / size)
        op_shares.append(len(ops_a & ops_b) / size)
    return statistics.fmean(edge_shares), statistics.fmean(op_shares)


def genotype_agreement(genotypes: Sequence[AnyGenotype]) -> Optional[Agreement]:
    """Mean pairwise agreement of two or more genotypes of one kind; ``None`` for fewer than two."""
    if len(genotypes) < 2:
        return None
    pairs = [_pair_agreement(a, b) for a, b in itertools.combinations(genotypes, 2)]
    return Agreement(runs=len(genotypes), edges=statistics.fmean(p[0] for p in pairs),
                     ops=statistics.fmean(p[1] for p in pairs))

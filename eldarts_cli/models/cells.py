"""Cell planning and edge indexing shared by the supernet and the evaluation network.

A cell (paper Figure 2) has two input states (the outputs of the two
previous cells) and ``nodes`` intermediate nodes; node ``j`` receives an edge
from every earlier state, so state indices run ``0, 1`` (inputs) then
``2 .. nodes + 1``. Edges are numbered node by node, DARTS' order:
``(node 0, state 0), (node 0, state 1), (node 1, state 0), ...``.

A NAS-Bench-201 cell has one input (``inputs=1``): state 0 is the input,
states ``1 .. nodes`` the nodes, and the same numbering gives NAS-Bench-201's
edge order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``.
"""

from __future__ import annotations

from dataclasses import dataclass


def edge_index(nodes: int, inputs: int = 2) -> list[tuple[int, int]]:
    """``[(node, source_state), ...]`` in DARTS' edge order (14 edges for 4 nodes and 2 inputs)."""
    return [(node, source) for node in range(nodes) for source in range(node + inputs)]


def state_name(state: int) -> str:
    """A DARTS cell state as figures and messages name it: the inputs ``c_{k-2}``, ``c_{k-1}``, then nodes from 0."""
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(state, str(state - 2))


def num_edges(nodes: int, inputs: int = 2) -> int:
    return nodes * (nodes + 2 * inputs - 1) // 2


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Cells at 1/3 and 2/3 of the depth are reduction cells (DARTS)."""
    return (layers // 3, 2 * layers // 3)


@dataclass(frozen=True)
class CellPlan:
    index: int
    reduction: bool
    reduction_prev: bool
    c_prev_prev: int
    c_prev: int
    channels: int  # channels of each intermediate node
    c_out: int  # channels of the cell output (multiplier * channels)


def plan_cells(layers: int, channels: int, stem_channels: int, multiplier: int) -> list[CellPlan]:
    """Channel and reduction plan of the cell stack.

    Channels double at each reduction cell; a cell after a reduction cell
    gets its ``s_{k-2}`` input through a FactorizedReduce.
    """
    reductions = set(reduction_layers(layers))
    plan = []
    c_prev_prev, c_prev, c_curr = stem_channels, stem_channels, channels
    reduction_prev = False
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_curr *= 2
        c_out = multiplier * c_curr
        plan.append(CellPlan(i, reduction, reduction_prev, c_prev_prev, c_prev, c_curr, c_out))
        c_prev_prev, c_prev = c_prev, c_out
        reduction_prev = reduction
    return plan

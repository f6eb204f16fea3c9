"""Named search spaces (paper 2.2.1): which ops every edge of a cell chooses among, and in which cell.

``SEARCH_SPACES`` maps a name a recipe can give (``search_space.ops: ess``)
to a :class:`SearchSpace`. ``darts`` is DARTS' 8-op set; ``ess`` is the
paper's efficient search space, the 4 ops it kept after profiling them
(Figure 1): skip_connect, sep_conv_3x3, max_pool_3x3, dil_conv_3x3. Both
search DARTS' cell (normal + reduction, two inputs, top-2 edges per node).
``nb201`` is NAS-Bench-201's space: its 5 ops in its own cell
(:mod:`eldarts_cli.models.nb201`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.registry import Registry


@dataclass(frozen=True)
class SearchSpace:
    """``cell``: ``darts`` (models/supernet.py) or ``nb201`` (models/nb201_search.py)."""

    name: str
    ops: tuple[str, ...]
    description: str
    cell: str = "darts"


SEARCH_SPACES: Registry[SearchSpace] = Registry("search space")

#: The full DARTS space (8 ops) and the paper's efficient search space (ESS).
DARTS_SPACE = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
ESS_SPACE = ("skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3")

SEARCH_SPACES.register("ess", SearchSpace("ess", ESS_SPACE, "EL-DARTS' efficient search space (paper 2.2.1)"))
SEARCH_SPACES.register("darts", SearchSpace("darts", DARTS_SPACE, "the 8 ops of DARTS"))
#: NAS-Bench-201's ops in its index order (Dong & Yang, ICLR 2020).
NB201_SPACE = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
SEARCH_SPACES.register("nb201", SearchSpace("nb201", NB201_SPACE, "NAS-Bench-201's 5 ops in its cell", cell="nb201"))

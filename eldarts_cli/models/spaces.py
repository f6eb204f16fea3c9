"""Named search spaces (paper 2.2.1): which ops every edge of a cell chooses among.

``SEARCH_SPACES`` maps a name a recipe can give (``search_space.ops: ess``)
to a :class:`SearchSpace`. ``darts`` is DARTS' 8-op set; ``ess`` is the
paper's efficient search space, the 4 ops it kept after profiling them
(Figure 1): skip_connect, sep_conv_3x3, max_pool_3x3, dil_conv_3x3.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.registry import Registry


@dataclass(frozen=True)
class SearchSpace:
    name: str
    ops: tuple[str, ...]
    description: str


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

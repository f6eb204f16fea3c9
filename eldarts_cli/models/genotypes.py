"""Genotypes: a discrete cell architecture, as data (JSON/YAML), never code.

A genotype lists, for the normal and the reduction cell, two ``(op, source)``
pairs per intermediate node (DARTS convention) and which states are
concatenated into the cell output. ``derive_genotype`` turns architecture
weights into one (paper section 2.1 and 2.3: best op per edge, top-2
incoming edges per node, edge coefficients taken into account, ``none``
never chosen). ``GENOTYPES`` is the zoo of published cells.

A NAS-Bench-201 cell is a :class:`~eldarts_cli.models.nb201.NB201Genotype`
(its arch string); :func:`load_genotype` reads either kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError, field_validator, model_validator

from ..core.errors import GenotypeError
from ..core.io import atomic_write_text, read_json
from ..core.registry import Registry
from ..core.validation import format_validation_error
from .cells import edge_index
from .nb201 import NB201Genotype
from .ops import OPS

Edge = tuple[str, StrictInt]  # strict: an input written true (or 1.0) is not taken as node 1


class Genotype(BaseModel):
    """A normal and a reduction cell; ``name`` is informational."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    normal: list[Edge]
    normal_concat: list[StrictInt]
    reduce: list[Edge]
    reduce_concat: list[StrictInt]
    name: str | None = None

    @field_validator("normal", "reduce")
    @classmethod
    def _check_edges(cls, edges: list[Edge]) -> list[Edge]:
        if not edges or len(edges) % 2:
            raise ValueError(f"needs two (op, input) pairs per node, got {len(edges)} pairs")
        for position, (op, source) in enumerate(edges):
            node = position // 2
            OPS.canonical(op)  # unknown op: the registry's message, with a suggestion
            if op == "none":
                raise ValueError("'none' cannot be an edge of a discrete cell")
            if not 0 <= source < node + 2:
                raise ValueError(
                    f"node {node} cannot take input {source}: inputs of node {node} are 0..{node + 1}"
                )
        return edges

    @model_validator(mode="after")
    def _check_concat(self) -> "Genotype":
        for cell in ("normal", "reduce"):
            states = len(getattr(self, cell)) // 2 + 2
            concat = getattr(self, f"{cell}_concat")
            bad = [i for i in concat if not 0 <= i < states]
            if not concat or bad:
                raise ValueError(f"{cell}_concat {concat} must name states in 0..{states - 1}")
            if len(set(concat)) != len(concat):
                raise ValueError(f"{cell}_concat {concat} names a state twice")
            if cell == "reduce" and {0, 1} & set(concat):  # (it ran into a shape error blamed on the image size)
                raise ValueError(f"reduce_concat {concat} names the cell's inputs (0, 1), which are at twice the "
                                 f"resolution of its output: name its nodes, 2..{states - 1}")
        return self

    @property
    def nodes(self) -> int:
        return len(self.normal) // 2

    def unused_nodes_note(self) -> Optional[str]:
        """A warning for nodes whose output nothing reads (not in the concat, no later node's input): they are
        built, trained and counted in params and MACs all the same, as DARTS' code builds them; ``None`` if none."""
        parts = []
        for cell in ("normal", "reduce"):
            edges, concat = getattr(self, cell), getattr(self, f"{cell}_concat")
            read = set(concat) | {source for _, source in edges}
            unused = [state for state in range(2, len(edges) // 2 + 2) if state not in read]
            if unused:
                parts.append(f"{cell} cell state{'s' * (len(unused) > 1)} {', '.join(map(str, unused))}")
        if not parts:
            return None
        return (f"in {' and '.join(parts)} nothing reads the node's output (not in the concat, no later node's "
                "input): its ops are built, trained and counted in the params and MACs all the same")

    def to_json(self) -> str:
        data = self.model_dump(exclude_none=True)
        return json.dumps(data, indent=2)

    def cell(self, reduction: bool) -> tuple[list[Edge], list[int]]:
        if reduction:
            return list(self.reduce), list(self.reduce_concat)
        return list(self.normal), list(self.normal_concat)

    def count(self, op: str, reduction: bool = False) -> int:
        edges, _ = self.cell(reduction)
        return sum(1 for name, _ in edges if name == op)


#: The zoo; lookups ignore case and ``-`` vs ``_`` (``darts_v2``, ``PC-DARTS``).
GENOTYPES: Registry[Genotype] = Registry("genotype", fold=lambda name: name.lower().replace("-", "_"))


def _zoo(name: str, normal, reduce, source: str) -> None:
    GENOTYPES.register(
        name,
        Genotype(
            name=name, normal=normal, normal_concat=[2, 3, 4, 5], reduce=reduce, reduce_concat=[2, 3, 4, 5]
        ),
    )
    ZOO_SOURCES[name] = source


ZOO_SOURCES: dict[str, str] = {}

# Cells as published by their authors' code releases (quoted in each paper's repository).
_zoo(
    "DARTS_V1",
    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    "Liu et al., DARTS (ICLR 2019), first order",
)
_zoo(
    "DARTS_V2",
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    "Liu et al., DARTS (ICLR 2019), second order",
)
_zoo(
    "PC_DARTS",
    [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
     ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
     ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    "Xu et al., PC-DARTS (ICLR 2020), searched on CIFAR-10",
)
_zoo(
    "PC_DARTS_IMAGENET",
    [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
     ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
    [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
     ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    "Xu et al., PC-DARTS (ICLR 2020), searched on ImageNet",
)
_zoo(
    "P_DARTS",
    [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
    [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
     ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    "Chen et al., P-DARTS (ICCV 2019), searched on CIFAR-10",
)
_zoo(
    "GDAS_V1",
    [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
     ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3)],
    [("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
     ("dil_conv_5x5", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)],
    "Dong & Yang, GDAS (CVPR 2019), searched on CIFAR-10 (D-X-Y/AutoDL-Projects, DXYs/genotypes.py)",
)


def zoo_genotype(name: str) -> Genotype:
    """Look a zoo name up, case- and dash-insensitively (``darts_v2``, ``PC-DARTS``)."""
    return GENOTYPES.get(name)


#: Either kind of cell: DARTS' normal + reduction cells, or a NAS-Bench-201 cell.
AnyGenotype = Union[Genotype, NB201Genotype]


def genotype_from_dict(data: object, origin: str = "genotype") -> AnyGenotype:
    """A genotype from its JSON form: ``{"normal": ..., "reduce": ...}`` or ``{"arch": "|...|"}``."""
    model = NB201Genotype if isinstance(data, dict) and "arch" in data else Genotype
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise GenotypeError(format_validation_error(error, model, origin)) from None


def nb201_from_string(text: str, origin: str = "arch string") -> NB201Genotype:
    """A NAS-Bench-201 cell from its arch string, with a one-line error naming what is wrong."""
    return genotype_from_dict({"arch": text.strip()}, origin)


def load_genotype(ref: str | Path) -> AnyGenotype:
    """A genotype from a NAS-Bench-201 arch string, a JSON file, a file holding an arch string, a run
    folder holding ``genotype.json``, or a zoo name."""
    if isinstance(ref, str) and ref.strip().startswith("|"):
        return nb201_from_string(ref)
    if not str(ref).strip():  # Path("") is the current folder
        raise GenotypeError("the genotype is empty: give a zoo name (e.g. DARTS_V2), a genotype.json, a search run "
                            "folder or a NAS-Bench-201 arch string")
    path = Path(ref)
    if path.is_dir():
        path = path / "genotype.json"
        if not path.exists():
            raise GenotypeError(f"{ref} is a folder without genotype.json (is it a finished search run?)")
    if path.is_file():
        try:
            data = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            small = path.stat().st_size < 10_000
            text = path.read_text(encoding="utf-8-sig", errors="replace").strip() if small else ""
            if not text.startswith("|"):
                if path.suffix.lower() in (".yaml", ".yml"):  # the genotype left out: the recipe taken for it
                    raise GenotypeError(f"{path} is a recipe, not a genotype: the genotype comes first "
                                        f"(eldarts evaluate GENOTYPE {path}; GENOTYPE a genotype.json, a search run "
                                        "folder, a zoo name such as DARTS_V2, or an arch string)") from None
                raise GenotypeError(f"{path}: not valid JSON ({error}), nor a NAS-Bench-201 arch string") from None
            data = {"arch": text}
        except OSError as error:
            raise GenotypeError(f"cannot read {path}: {error.strerror or error}") from None
        if isinstance(data, str):  # a JSON string holding an arch string
            data = {"arch": data}
        genotype = genotype_from_dict(data, str(path))
        if genotype.name is None:  # name it after its run folder or file
            label = path.parent.name if path.name == "genotype.json" else path.stem
            genotype = genotype.model_copy(update={"name": label})
        return genotype
    if str(ref).endswith(".json") or "/" in str(ref):
        raise GenotypeError(f"genotype file {ref} does not exist")
    try:
        return zoo_genotype(str(ref))
    except KeyError as error:
        raise GenotypeError(f"{error} (or give a genotype.json file or a search run folder)") from None


def save_genotype(genotype: AnyGenotype, path: Path) -> None:
    atomic_write_text(path, genotype.to_json() + "\n")


def derive_cell(
    op_weights: torch.Tensor,
    edge_weights: torch.Tensor | None,
    ops: Sequence[str],
    nodes: int,
) -> list[Edge]:
    """Discretise one cell.

    ``op_weights`` is ``(edges, len(ops))`` (softmaxed alphas),
    ``edge_weights`` is ``(edges,)`` (per-node softmaxed edge coefficients)
    or ``None``. An edge's strength is its best non-``none`` op weight times
    its edge weight; each node keeps its two strongest edges.
    """
    op_weights = op_weights.detach().float().cpu()
    usable = [i for i, name in enumerate(ops) if name != "none"]
    if not usable:
        raise GenotypeError("the search space has no op other than 'none'")
    best_value, best_pos = op_weights[:, usable].max(dim=1)
    strength = best_value.clone()
    if edge_weights is not None:
        strength = strength * edge_weights.detach().float().cpu()
    gene: list[Edge] = []
    index = edge_index(nodes)
    start = 0
    for node in range(nodes):
        count = node + 2
        rows = list(range(start, start + count))
        assert all(index[r][0] == node for r in rows)
        # stable: ties keep the lower source index, as sorted() does in DARTS
        chosen = sorted(rows, key=lambda r: -float(strength[r]))[:2]
        for r in sorted(chosen, key=lambda r: -float(strength[r])):
            gene.append((ops[usable[int(best_pos[r])]], index[r][1]))
        start += count
    return gene


def derive_genotype(
    normal_weights: torch.Tensor,
    reduce_weights: torch.Tensor,
    ops: Sequence[str],
    nodes: int,
    normal_edge_weights: torch.Tensor | None = None,
    reduce_edge_weights: torch.Tensor | None = None,
    multiplier: int | None = None,
) -> Genotype:
    multiplier = multiplier or nodes
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    return Genotype(
        normal=derive_cell(normal_weights, normal_edge_weights, ops, nodes),
        normal_concat=concat,
        reduce=derive_cell(reduce_weights, reduce_edge_weights, ops, nodes),
        reduce_concat=concat,
    )

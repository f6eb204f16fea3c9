"""The ablation recipe (paper section 3.4, Table 3): rows of components, seeds, a base search recipe.

The paper builds EL-DARTS on "the Partial Connection baseline (X) derived
from PC-DARTS" and toggles three components:

* **A** efficient search space (ESS, 2.2.1): on = ``search_space.ops: ess``
  (4 ops); off = ``darts`` (the 8 DARTS ops).
* **B** DCSS (2.3): on = learnable edge coefficients initialised from
  ``U(low, high)`` (eq. 3). Off depends on ``b_off``: ``pc-darts`` (default)
  keeps PC-DARTS' edge normalisation (coefficients ``1e-3 * N(0, 1)``),
  because the baseline X is PC-DARTS, which has it; ``none`` removes edge
  coefficients altogether (edges summed unweighted, as in DARTS).
* **C** entropy regularisation (2.4): ``entropy.enabled``.

Partial channels stay on in every row.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Sequence

from pydantic import Field, field_validator, model_validator

from ..core.errors import RecipeError
from ..core.registry import Registry, suggest
from ..core.validation import SEED_RANGE
from .base import (
    RecipePath, RunName, StrictModel, apply_overrides, as_mapping, check_recipe_kind, dotted_keys, mark_overrides,
    read_recipe_dict, validate_recipe,
)
from .search import SearchRecipe

#: The three components of Table 3, by letter.
COMPONENTS: Registry[str] = Registry("component")
COMPONENTS.register("A", "efficient search space (ESS, paper 2.2.1)")
COMPONENTS.register("B", "dynamic coefficient scheduling (DCSS, paper 2.3)")
COMPONENTS.register("C", "entropy regularisation (paper 2.4)")
#: Label of the row with every component off: the paper's baseline X.
BASELINE = "X"
#: Table 3's rows, in the paper's order.
PAPER_ROWS = ("X", "AB", "AC", "BC", "ABC")
#: All 2^3 rows, from the baseline to the full model.
GRID_ROWS = tuple(
    "".join(c for c, on in zip("ABC", bits) if on) or BASELINE
    for bits in sorted(itertools.product((False, True), repeat=3), key=lambda b: (sum(b), [not x for x in b]))
)

# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


def row_label(value: Any) -> str:
    """Canonical label of a row: ``"ABC"``, ``"AC"``, ``"X"`` (all off).

    Accepts a string of component letters (``"abc"``, ``"X"``, ``"none"``, ``""``)
    or a mapping ``{A: true, B: false, C: true}``.
    """
    if isinstance(value, dict):
        for key in value:
            COMPONENTS.canonical(str(key))  # the registry's message, with a suggestion
        bad = [k for k, v in value.items() if not isinstance(v, bool)]
        if bad:
            raise ValueError(f"component {bad[0]} must be true or false, got {value[bad[0]]!r}")
        on = {str(k) for k, v in value.items() if v}
        return "".join(c for c in COMPONENTS if c in on) or BASELINE
    if not isinstance(value, str):
        raise ValueError(f"a row is a string of component letters like 'AB' or a mapping {{A: true, ...}}, got {value!r}")
    text = value.strip().upper()
    if text in ("", BASELINE, "NONE"):
        return BASELINE
    unknown = sorted({c for c in text if c not in COMPONENTS})
    if unknown:
        raise ValueError(f"row '{value}' names unknown component(s) {', '.join(unknown)}; components are {_names()} "
                         f"(and '{BASELINE}' for none)")
    if len(set(text)) != len(text):
        raise ValueError(f"row '{value}' names a component twice")
    return "".join(c for c in COMPONENTS if c in text)


def _names() -> str:
    return ", ".join(f"{c} = {d}" for c, d in COMPONENTS.items())


def components(label: str) -> dict[str, bool]:
    return {c: c in label for c in COMPONENTS}


def component_settings(label: str, b_off: str) -> dict:
    """The recipe sections one row sets (see the module docstring)."""
    on = components(label)
    if on["B"]:
        edges = {"enabled": True, "init": "uniform"}
    elif b_off == "pc-darts":
        edges = {"enabled": True, "init": "normal"}
    else:
        edges = {"enabled": False}
    return {
        "search_space": {"ops": "ess" if on["A"] else "darts"},
        "edge_coefficients": edges,
        "entropy": {"enabled": on["C"]},
    }


#: The recipe keys the rows set (``component_settings``): given for every search, each row would replace them.
ROW_KEYS = frozenset({"search_space.ops", "edge_coefficients.enabled", "edge_coefficients.init", "entropy.enabled"})


# ---------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------


def _settings(value: Any) -> Any:
    """``--set`` strings (a list) or nested mapping -> nested mapping."""
    return as_mapping(value, strict=True)


class EvaluateStage(StrictModel):
    """Evaluate each searched genotype with an evaluation recipe (``eldarts evaluate``)."""

    recipe: RecipePath = Field(description="evaluation recipe, relative to the ablation recipe (a --set path: to where eldarts runs)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="mapping or list of key=value applied to it")

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        return _settings(value)


class SweepConfig(StrictModel):
    """One setting of the ``cost:`` section swept over values (hardware-aware search): each value is a run of
    every row and seed, e.g. ``{key: cost.target, values: [1.5, 2, 3]}``."""

    key: Literal["cost.target", "cost.weight"] = Field(description="the cost setting swept")
    values: list[float] = Field(description="its values, one set of runs each")

    @model_validator(mode="after")
    def _values(self) -> "SweepConfig":
        if not self.values:
            raise ValueError("give at least one value")
        if len(set(self.values)) != len(self.values):
            raise ValueError("a value is listed twice")
        if any(v != v or v in (float("inf"), float("-inf")) for v in self.values):
            raise ValueError("values must be finite numbers")
        if self.key == "cost.target" and any(v <= 0 for v in self.values):
            raise ValueError(f"cost.target values must be above 0, got {self.values}")
        if self.key == "cost.weight" and any(v < 0 for v in self.values):
            raise ValueError(f"cost.weight values must be 0 or more, got {self.values}")
        return self

    @property
    def short(self) -> str:
        """``target`` or ``weight``: the part of a run's folder name that carries the value."""
        return self.key.split(".")[-1]

    def setting(self, value: float) -> dict:
        section, field = self.key.split(".")
        return {section: {field: value}}

    def label(self, value: float) -> str:
        return f"{self.key}={value:g}"


class AblationRecipe(StrictModel):
    """Which rows of Table 3 to run, on which base search recipe, with which seeds."""

    recipe_kind: ClassVar[str] = "ablation"

    name: RunName = "ablation"
    base: RecipePath = Field(description="search recipe every run starts from, relative to this file (a --set path: to where eldarts runs)")
    rows: list[str] = Field(default_factory=lambda: list(PAPER_ROWS),
                            description="'paper' (Table 3's five rows), 'grid' (all 8) or a list like [ABC, AB, X]")
    seeds: list[Annotated[int, Field(**SEED_RANGE)]] = Field(
        default_factory=lambda: [0, 1, 2], description="one search per seed and row (paper: 3)")
    b_off: Literal["pc-darts", "none"] = Field(
        "pc-darts", description="B off: PC-DARTS edge normalisation (the paper's baseline X) or no edge coefficients")
    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to every search (mapping or key=value list)")
    row_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per row label, applied last")
    evaluate: Optional[EvaluateStage] = Field(None, description="evaluate each searched genotype (default: no)")
    sweep: Optional[SweepConfig] = Field(None, description="hardware-aware search: cost.target or cost.weight values, "
                                                           "each run for every row and seed")
    figures: bool = Field(True, description="write each run's figures when it finishes")

    @field_validator("rows", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower()
            if key == "paper":
                return list(PAPER_ROWS)
            if key == "grid":
                return list(GRID_ROWS)
            if all(c.upper() in COMPONENTS for c in value.strip()) and value.strip():
                value = [value]
            else:
                raise ValueError(f"rows: give 'paper', 'grid' or a list of rows, got {value!r}")
        if not isinstance(value, list) or not value:
            raise ValueError("rows: give 'paper', 'grid' or a non-empty list of rows")
        labels = [row_label(v) for v in value]
        if len(set(labels)) != len(labels):
            twice = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(f"row(s) {', '.join(twice)} listed twice")
        return labels

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError("a seed is listed twice")
        return seeds

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        return _settings(value)

    @field_validator("row_overrides", mode="before")
    @classmethod
    def _row_overrides(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for key, settings in value.items():
            try:
                label = row_label(str(key))
            except ValueError as error:
                raise ValueError(f"row_overrides: {error}") from None
            out[label] = _settings(settings)
        return out

    @model_validator(mode="after")
    def _no_per_run_keys(self) -> "AblationRecipe":
        """``seed`` and ``name`` are each run's own (from ``seeds`` and the ablation's name): a value set for the
        searches was accepted and then overwritten in every run."""
        for where, settings in (("overrides", self.overrides),
                                *((f"row_overrides -> {row}", s) for row, s in self.row_overrides.items())):
            if "seed" in settings:
                raise ValueError(f"{where}: seed is each run's own, taken from seeds; give seeds: "
                                 f"[{settings['seed']}] (--set 'seeds=[{settings['seed']}]') instead")
            if "name" in settings:
                raise ValueError(f"{where}: name is each run's own (the ablation's name and the run's folder); "
                                 "set the ablation's name instead")
        # what the rows set (component_settings), given for every run: accepted, then replaced in every run
        given = [key for key in sorted(dotted_keys(self.overrides)) if key in ROW_KEYS]
        if given:
            raise ValueError(f"overrides: {', '.join(given)} {'is' if len(given) == 1 else 'are'} what each row "
                             f"sets ({_names()}); choose rows, or set {'it' if len(given) == 1 else 'them'} "
                             "for a row in row_overrides")
        return self

    @model_validator(mode="after")
    def _row_overrides_name_rows(self) -> "AblationRecipe":
        extra = [k for k in self.row_overrides if k not in self.rows]
        if extra:
            raise ValueError(f"row_overrides names row(s) {', '.join(extra)} that are not in rows ({', '.join(self.rows)})")
        return self


def load_ablation(path: Path | str, sets: Sequence[str] = ()) -> AblationRecipe:
    """Read an ablation recipe; paths in it are made relative to its folder.

    ``sets`` are ``key=value`` strings: a key that starts with a field of the
    ablation recipe (``seeds=[0]``, ``rows=[ABC]``) sets that field; any other
    key (``search.epochs=2``, ``runtime.threads=1``) is applied to every search.
    """
    path = Path(path)
    data, lines = read_recipe_dict(path)
    check_recipe_kind(data, AblationRecipe, str(path), lines)
    if isinstance(data.get("overrides"), list):  # so that --set can add to it
        data["overrides"] = _settings_or_error(data["overrides"], f"{path}: overrides")
    own, search = [], []
    for item in sets:
        head = item.split("=", 1)[0].split(".", 1)[0].strip()
        if head not in AblationRecipe.model_fields and head not in SearchRecipe.model_fields:
            fields = [*AblationRecipe.model_fields, *SearchRecipe.model_fields]
            raise RecipeError(f"--set {item}: '{head}' is neither a field of the ablation recipe nor a section of its "
                              f"searches{suggest(head, fields)}; the ablation's: "
                              f"{', '.join(AblationRecipe.model_fields)}")
        if head == "seed":  # (AblationRecipe refuses it in the file's overrides too)
            value = item.split("=", 1)[1].strip() if "=" in item else "N"
            raise RecipeError(f"--set {item}: seed is each run's own, taken from the ablation's seeds; give "
                              f"--set 'seeds=[{value}]' instead")
        key = item.split("=", 1)[0].strip()
        if key in ROW_KEYS:  # (AblationRecipe refuses them in the file's overrides, and in a --set mapping)
            raise RecipeError(f"--set {item}: {key} is what each row sets ({_names()}); choose rows (--set "
                              "'rows=[...]'), or set it for a row in the recipe's row_overrides")
        (own if head in AblationRecipe.model_fields else search).append(item)
    data = apply_overrides(data, own)
    if search:
        current = data.get("overrides") or {}
        if not isinstance(current, dict):
            raise RecipeError(f"{path}: [overrides] give a mapping or a list of 'key=value' strings")
        data["overrides"] = apply_overrides(current, search)
    recipe = validate_recipe(data, AblationRecipe, str(path), mark_overrides(lines, own))
    # paths in the file are read from its folder; a --set path, typed in the shell, from where eldarts runs
    typed = {item.split("=", 1)[0].strip(): item for item in own}
    base_set = typed.get("base")
    recipe_set = typed.get("evaluate.recipe") or typed.get("evaluate")
    folder = path.parent
    updates: dict[str, Any] = {"base": recipe.base.expanduser() if base_set else _relative_to(recipe.base, folder)}
    if recipe.evaluate is not None:
        where = recipe.evaluate.recipe.expanduser() if recipe_set else _relative_to(recipe.evaluate.recipe, folder)
        updates["evaluate"] = recipe.evaluate.model_copy(update={"recipe": where})
    recipe = recipe.model_copy(update=updates)
    if not recipe.base.is_file():
        said = f"--set {base_set}" if base_set else f"{path}: [base]"
        raise RecipeError(f"{said}: search recipe {recipe.base} does not exist")
    if recipe.evaluate is not None and not recipe.evaluate.recipe.is_file():
        said = f"--set {recipe_set}" if recipe_set else f"{path}: [evaluate -> recipe]"
        raise RecipeError(f"{said}: evaluation recipe {recipe.evaluate.recipe} does not exist")
    return recipe


def _settings_or_error(value: Any, where: str) -> dict:
    try:
        return _settings(value)
    except ValueError as error:
        raise RecipeError(f"{where}: {error}") from None


def _relative_to(path: Path, folder: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else folder / path

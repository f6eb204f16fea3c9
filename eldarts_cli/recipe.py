"""Recipes: YAML -> pydantic (strict) -> builders.

``load_recipe`` reads a YAML file (``include:`` files first, the recipe on
top), applies ``--set a.b=value`` overrides, and validates the result
against a pydantic model whose every section forbids unknown keys. Errors
name the file and line, the field path, the value given and, for a typo, the
closest valid name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Type, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError
from .registry import suggest

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------
# Sections shared by search and evaluation recipes
# ---------------------------------------------------------------------------


class DataConfig(StrictModel):
    """Which images, where they are, and how batches are made."""

    dataset: str = Field("cifar10", description="registered dataset name (see eldarts_cli.data.DATASETS)")
    root: Optional[Path] = Field(None, description="dataset folder or archive; default ./data/<dataset>")
    download: bool = Field(False, description="let torchvision download the dataset into root")
    batch_size: int = Field(64, gt=0)
    eval_batch_size: Optional[int] = Field(None, gt=0, description="default: batch_size")
    image_size: Optional[int] = Field(None, gt=0, description="resize images once, in memory")
    limit: Optional[int] = Field(None, gt=0, description="use only the first N training images")
    test_limit: Optional[int] = Field(None, gt=0, description="use only the first N test images")
    augment: bool = Field(True, description="random crop (zero padding) and horizontal flip")
    crop_padding: int = Field(4, ge=0)
    cutout: int = Field(0, ge=0, description="cutout square side in pixels (0 = off)")
    num_workers: int = Field(4, ge=0, description="loader workers for streamed (ImageFolder) data")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from .data import DATASETS

        if name not in DATASETS:
            raise ValueError(f"unknown dataset '{name}'{suggest(name, DATASETS.names())}; known: {', '.join(DATASETS)}")
        return name


class RuntimeConfig(StrictModel):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="autocast dtype on CUDA")
    channels_last: bool = False
    threads: Optional[int] = Field(None, gt=0, description="CPU threads (default: torch's choice)")
    log_every: int = Field(20, gt=0, description="steps between progress updates")


class OptimConfig(StrictModel):
    """SGD on the network weights, cosine-annealed per epoch."""

    lr: float = Field(0.1, gt=0)
    lr_min: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: Optional[float] = Field(5.0, gt=0)


# ---------------------------------------------------------------------------
# The search recipe
# ---------------------------------------------------------------------------


class SearchSpaceConfig(StrictModel):
    """Candidate ops on every edge (paper 2.2.1): 'ess', 'darts' or a list of registered ops."""

    ops: list[str] = Field(default_factory=lambda: ["skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3"])

    @field_validator("ops", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        from .ops import SEARCH_SPACES

        if isinstance(value, str):
            if value not in SEARCH_SPACES:
                raise ValueError(f"unknown search space '{value}'{suggest(value, list(SEARCH_SPACES))}; give 'ess', 'darts' or a list of ops")
            return list(SEARCH_SPACES[value])
        return value

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        from .ops import OPS

        for op in ops:
            if op not in OPS:
                raise ValueError(f"unknown op '{op}'{suggest(op, OPS.names())}; known: {', '.join(OPS)}")
        if len(set(ops)) != len(ops):
            raise ValueError("an op is listed twice")
        if all(op == "none" for op in ops):
            raise ValueError("the space needs at least one op other than 'none'")
        return ops


class SupernetConfig(StrictModel):
    channels: int = Field(16, gt=0, description="initial channels C")
    layers: int = Field(8, ge=3, description="cells; reductions at 1/3 and 2/3")
    nodes: int = Field(4, ge=1, description="intermediate nodes per cell")
    multiplier: int = Field(4, ge=1, description="nodes concatenated into the cell output")
    stem_multiplier: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _multiplier(self) -> "SupernetConfig":
        if self.multiplier > self.nodes:
            raise ValueError(f"multiplier ({self.multiplier}) cannot exceed nodes ({self.nodes})")
        return self


class PartialChannelConfig(StrictModel):
    """Partial channel connections (paper 2.2.2, PC-DARTS): 1/K of the channels go through the ops."""

    ratio: int = Field(4, ge=1, description="K; 1 = full channels (DARTS)")


class EdgeCoefficientConfig(StrictModel):
    """DCSS (paper 2.3, eq. 3-5): learnable per-edge coefficients, softmax over a node's inputs."""

    enabled: bool = True
    init: Literal["uniform", "normal"] = Field("uniform", description="uniform: U(low, high) (EL-DARTS); normal: std * N(0,1) (PC-DARTS)")
    low: float = Field(0.4, gt=0, lt=1)
    high: float = Field(0.6, gt=0, lt=1)
    std: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _range(self) -> "EdgeCoefficientConfig":
        if self.init == "uniform" and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class EntropyConfig(StrictModel):
    """Temperature-annealed entropy regularisation (paper 2.4, eq. 6-9)."""

    enabled: bool = True
    weight: float = Field(1e-3, ge=0, description="lambda")
    t_init: float = Field(5.0, gt=0)
    decay: float = Field(0.95, gt=0, le=1, description="beta in T(t) = max(T_min, T_init * beta^t)")
    t_min: float = Field(0.5, gt=0)


class ArchOptimConfig(StrictModel):
    """Adam on architecture weights and edge coefficients."""

    lr: float = Field(6e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(1e-3, ge=0)
    edge_lr: Optional[float] = Field(None, gt=0, description="lr of the DCSS coefficients (default: lr)")


class SearchLoopConfig(StrictModel):
    epochs: int = Field(50, gt=0)
    warmup_epochs: Optional[int] = Field(None, ge=0, description="epochs of weight training before architecture updates (default: warmup_fraction of epochs)")
    warmup_fraction: float = Field(0.3, ge=0, lt=1, description="warm-up share of epochs when warmup_epochs is not set (PC-DARTS: 15 of 50)")
    order: Literal["first", "second"] = Field(
        "first", description="bilevel approximation: first (current weights) or second (DARTS' unrolled step)"
    )
    hessian_epsilon: float = Field(0.01, gt=0, description="second order: finite-difference step r = epsilon / |grad| (DARTS: 0.01)")
    train_portion: float = Field(0.5, gt=0, lt=1, description="share of the training set for weights; the rest updates the architecture")
    val_batches: Optional[int] = Field(None, gt=0, description="cap on batches of the per-epoch validation pass")
    max_steps: Optional[int] = Field(None, gt=0, description="cap on steps per epoch (smoke runs)")

    @property
    def warmup(self) -> int:
        """Epochs before the first architecture step."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return int(self.warmup_fraction * self.epochs)


class SearchRecipe(StrictModel):
    """A whole search run (paper section 3.2 for the CIFAR-10 settings)."""

    name: str = "search"
    seed: int = 2
    data: DataConfig = DataConfig()
    search_space: SearchSpaceConfig = SearchSpaceConfig()
    network: SupernetConfig = SupernetConfig()
    partial_channels: PartialChannelConfig = PartialChannelConfig()
    edge_coefficients: EdgeCoefficientConfig = EdgeCoefficientConfig()
    entropy: EntropyConfig = EntropyConfig()
    optim: OptimConfig = OptimConfig()
    arch_optim: ArchOptimConfig = ArchOptimConfig()
    search: SearchLoopConfig = SearchLoopConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _divisible(self) -> "SearchRecipe":
        k, c = self.partial_channels.ratio, self.network.channels
        if c % k:
            divisors = [d for d in range(1, c + 1) if c % d == 0]
            raise ValueError(
                f"partial_channels.ratio={k} does not divide network.channels={c}; "
                f"use one of {', '.join(map(str, divisors))}"
            )
        if "skip_connect" in self.search_space.ops and (2 * c // k) % 2:
            raise ValueError("skip_connect on reduction edges needs an even number of searched channels")
        if self.search.warmup_epochs is not None and self.search.warmup >= self.search.epochs:
            raise ValueError(
                f"search.warmup_epochs ({self.search.warmup_epochs}) leaves no epoch for architecture "
                f"updates in {self.search.epochs} epochs"
            )
        return self


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------



def _compose_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line."""
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(n, path):
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                p = path + (str(key.value),)
                lines[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(n, yaml.SequenceNode):
            for i, value in enumerate(n.value):
                p = path + (i,)
                lines[p] = value.start_mark.line + 1
                walk(value, p)

    if node is not None:
        walk(node, ())
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    if not path.exists():
        raise RecipeError(f"recipe {path} does not exist")
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder, not a YAML file")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data, _compose_lines(text)


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe_dict(path: Path, _seen: tuple = ()) -> tuple[dict, dict[tuple, int]]:
    """The recipe as a plain dict, with ``include:`` files merged underneath."""
    path = Path(path)
    if path.resolve() in _seen:
        raise RecipeError(f"{path}: include cycle ({' -> '.join(map(str, _seen))})")
    data, lines = _read_yaml(path)
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        if not inc_path.exists():
            raise RecipeError(f"{path}:{lines.get(('include',), '?')}: included file {inc} does not exist")
        inc_data, _ = read_recipe_dict(inc_path, _seen + (path.resolve(),))
        merged = deep_merge(merged, inc_data)
    return deep_merge(merged, data), lines


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` strings; the value is parsed as YAML (``[a, b]``, ``1e-3``, ``true``)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.epochs=10")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise RecipeError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _model_fields(model_cls: type[BaseModel], path: tuple) -> list[str]:
    """Field names valid at ``path`` (for did-you-mean on unknown keys)."""
    cls = model_cls
    for part in path:
        field = cls.model_fields.get(str(part)) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return []
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def format_validation_error(
    error: ValidationError, model_cls: type[BaseModel], origin: str, lines: dict[tuple, int] | None = None
) -> str:
    messages = []
    for item in error.errors():
        loc = tuple(item["loc"])
        where = " -> ".join(str(p) for p in loc) or "recipe"
        line = None
        if lines:
            for cut in range(len(loc), 0, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
        place = line if isinstance(line, str) else (f"{origin}:{line}" if line else origin)
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            hint = suggest(str(loc[-1]), _model_fields(model_cls, loc[:-1]))
            valid = ", ".join(_model_fields(model_cls, loc[:-1]))
            msg = f"unknown key{hint}; valid keys here: {valid}"
        elif "input" in item and item["type"] not in ("missing",) and not isinstance(item["input"], dict):
            msg = f"{msg} (given: {item['input']!r})"
        messages.append(f"{place}: [{where}] {msg}")
    return "\n".join(messages)


def mark_overrides(lines: dict[tuple, Any], overrides: list[str] | None) -> dict[tuple, Any]:
    """Point errors in overridden fields at ``--set KEY`` instead of the file's line."""
    lines = dict(lines)
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        path = tuple(key.split("."))
        for known in [k for k in lines if k[: len(path)] == path]:
            del lines[known]
        lines[path] = f"--set {key}"
    return lines


def validate_recipe(data: dict, model_cls: Type[M], origin: str = "recipe", lines=None) -> M:
    try:
        return model_cls.model_validate(data)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, model_cls, origin, lines)) from None


def load_recipe(path: Path | str | None, model_cls: Type[M], overrides: list[str] | None = None) -> M:
    """Load, merge includes, override, validate. ``path=None`` gives the model's defaults."""
    if path is None:
        data, lines, origin = {}, {}, "defaults"
    else:
        data, lines = read_recipe_dict(Path(path))
        origin = str(path)
    data = apply_overrides(data, overrides)
    return validate_recipe(data, model_cls, origin, mark_overrides(lines, overrides))


def recipe_to_dict(recipe: BaseModel) -> dict:
    return recipe.model_dump(mode="json")


def dump_recipe(recipe: BaseModel, path: Path) -> None:
    """Write the fully resolved recipe (every default spelled out) as YAML."""
    from .runs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def recipe_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def recipe_differences(old: dict, new: dict, resumable: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every field that differs, except keys starting with one of ``resumable``."""
    a, b = _flatten(old), _flatten(new)
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not key.startswith(resumable)
    ]


def resume_recipe(run_dir: Path, model_cls: Type[M], given: M, overrides: list[str] | None,
                  resumable: tuple[str, ...]) -> tuple[M, list[str]]:
    """The recipe a resumed run continues with: the run's own ``recipe.yaml`` plus this command's ``--set``.

    Also returns the fields in which the recipe given now differs from the
    run's: a run started with ``--set search.epochs=10`` and resumed without
    it goes on with 10 epochs. A ``--set`` that changes more than the
    ``resumable`` fields is refused where the checkpoint is compared.
    """
    from .errors import RunFolderError

    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise RunFolderError(f"cannot resume: {run_dir} holds no recipe.yaml (was the run started?)")
    stored, lines = read_recipe_dict(path)
    recipe = validate_recipe(apply_overrides(stored, overrides), model_cls, str(path), mark_overrides(lines, overrides))
    return recipe, recipe_differences(recipe_to_dict(recipe), recipe_to_dict(given), resumable)


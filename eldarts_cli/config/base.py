"""Reading recipes: YAML -> includes -> ``--set`` overrides -> a strict pydantic model.

``load_recipe`` reads a YAML file (``include:`` files first, the recipe on
top), applies ``--set a.b=value`` overrides, and validates the result
against a pydantic model whose every section forbids unknown keys
(:class:`StrictModel`). Errors name the file and line (or ``--set KEY``),
the field path, the value given and, for a typo, the closest valid name
(``core.validation.format_validation_error``). The recipe models live beside
this module: ``sections`` (shared), ``search``, ``evaluate``, ``ablate``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Type, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..core.errors import RecipeError, RunFolderError
from ..core.io import atomic_write_text
from ..core.validation import StrictModel, format_validation_error

M = TypeVar("M", bound=BaseModel)


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


def recipe_yaml(recipe: BaseModel) -> str:
    """The fully resolved recipe (every default spelled out) as YAML."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def dump_recipe(recipe: BaseModel, path: Path) -> None:
    atomic_write_text(path, recipe_yaml(recipe))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def recipe_differences(old: dict, new: dict, resumable: tuple[str, ...] = ()) -> list[str]:
    # One rule for every resume (search, evaluate, ablate): only fields under ``resumable`` may change.
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
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise RunFolderError(f"cannot resume: {run_dir} holds no recipe.yaml (was the run started?)")
    stored, lines = read_recipe_dict(path)
    recipe = validate_recipe(apply_overrides(stored, overrides), model_cls, str(path), mark_overrides(lines, overrides))
    return recipe, recipe_differences(recipe_to_dict(recipe), recipe_to_dict(given), resumable)


"""One formatter for pydantic validation errors: recipes, genotypes, run files and profiles all use it.

A message names where (``file:line`` or ``--set KEY`` when known), the
field path (``[search -> arch_lr]``), what is wrong, the value given and, for
an unknown key, the closest valid name.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from .registry import suggest


class StrictModel(BaseModel):
    """Base of every recipe section and eldarts-owned file format: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def model_fields(model_cls: type[BaseModel], path: tuple) -> list[str]:
    """Field names valid at ``path`` inside ``model_cls`` (for did-you-mean on unknown keys)."""
    cls: Any = model_cls
    for part in path:
        field = cls.model_fields.get(str(part)) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        # an optional section (``Optional[CostConfig]``): the model inside it
        ann = next((arg for arg in getattr(ann, "__args__", ()) if isinstance(arg, type) and issubclass(arg, BaseModel)), ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return []
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def format_validation_error(
    error: ValidationError,
    model_cls: type[BaseModel],
    origin: str,
    lines: Optional[dict[tuple, Any]] = None,
    separator: str = "\n",
) -> str:
    """``origin:line: [a -> b] message (given: value)`` for each problem, joined by ``separator``.

    ``lines`` maps key paths to a line number or to a label such as ``--set KEY``.
    """
    messages = []
    for item in error.errors():
        loc = tuple(item["loc"])
        where = " -> ".join(str(p) for p in loc) or "top level"
        line = None
        if lines:
            for cut in range(len(loc), 0, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
        place = line if isinstance(line, str) else (f"{origin}:{line}" if line else origin)
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            valid = model_fields(model_cls, loc[:-1])
            msg = f"unknown key{suggest(str(loc[-1]), valid)}; valid keys here: {', '.join(valid)}"
        elif "input" in item and item["type"] != "missing" and not isinstance(item["input"], dict):
            msg = f"{msg} (given: {item['input']!r})"
        messages.append(f"{place}: [{where}] {msg}")
    return separator.join(messages)

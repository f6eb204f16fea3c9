"""One formatter for pydantic validation errors: recipes, genotypes, run files and profiles all use it.

A message names where (``file:line`` or ``--set KEY`` when known), the
field path (``[search -> arch_lr]``), what is wrong, the value given and, for
an unknown key, the closest valid name.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from .registry import suggest


def _scalar_kind(annotation: Any) -> Any:
    """``bool``, ``int``, ``float``, ``("text", options)`` (a Literal of words), ``("seq", [kinds])`` or ``None``
    (no strict check) for a field type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar_kind(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _scalar_kind(args[0]) if len(args) == 1 else None  # Optional[X]; wider unions stay lax
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return ("seq", tuple(_scalar_kind(a) for a in args)) if args else None
    if origin is typing.Literal and all(isinstance(arg, str) for arg in typing.get_args(annotation)):
        return ("text", typing.get_args(annotation))
    return annotation if annotation in (bool, int, float) else None


def _strict_value(kind: Any, value: Any, nullable: bool = False) -> None:
    """Raise ``ValueError`` where pydantic's lax mode would quietly convert: ``true`` to 1, ``"3"`` to 3, 1 to true."""
    if kind is None or value is None:
        return
    if isinstance(kind, tuple) and kind[0] == "text":  # a choice of words that YAML read as something else
        options = ", ".join(map(repr, kind[1]))   # (runtime.amp=off was "given: False", and no more said)
        if isinstance(value, bool):
            raise ValueError(f"expected one of {options}, not true/false (YAML reads yes/no/on/off as true/false)")
        if isinstance(value, (int, float)):
            raise ValueError(f"expected one of {options}, not a number")
        return
    if isinstance(kind, tuple):
        if isinstance(value, (list, tuple)):
            kinds = kind[1]
            for i, item in enumerate(value):
                _strict_value(kinds[i] if i < len(kinds) else kinds[-1], item)
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false" + (" (or null)" if nullable else ""))
    elif isinstance(value, bool):
        raise ValueError("expected a number, not true/false (YAML reads yes/no/on/off as true/false too)")
    elif isinstance(value, str):
        if value.strip().lower().lstrip("+-.") in ("nan", "inf", "infinity"):
            raise ValueError("expected a finite number")
        raise ValueError("expected a number, not text")
    elif kind is float and isinstance(value, (int, float)) and FLOAT32_MAX < abs(value) < math.inf:
        raise ValueError(f"beyond float32's range ({FLOAT32_MAX:.3g}), which the tensors holding it overflow")


#: The largest finite float32: a recipe's numbers end up in float32 tensors (an lr of 1e39 in SGD's state).
FLOAT32_MAX = 3.4028234663852886e38
#: Seeds: what every generator eldarts seeds takes, with room for the per-epoch seeds derived from them.
SEED_RANGE = dict(ge=0, lt=2**32)


class StrictModel(BaseModel):
    """Base of every recipe section and eldarts-owned file format.

    Unknown keys are errors, not ignored; ``inf`` and ``nan`` are refused;
    numbers and booleans are not converted into each other or from text
    (``--set search.epochs=true`` is an error, not 1 epoch).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            _strict_value(_scalar_kind(field.annotation), value, type(None) in typing.get_args(field.annotation))
        return value


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


def _names(message: str, key: str) -> bool:
    """Whether ``message`` names the field ``key`` (``optim.lr``, not as part of ``optim.lr_min``)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", message) is not None


GIVEN_MAX = 60  # characters of a given value an error line quotes (a whole file given as JSON is cut short)


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= GIVEN_MAX else f"{text[: GIVEN_MAX - 3]}..."


def _place(line: Any, origin: str) -> str:
    """Where a value was given: ``--set KEY``, ``file:line`` (an included file's key), ``origin:line`` or ``origin``."""
    return (line if isinstance(line, str) else f"{line[0]}:{line[1]}" if isinstance(line, tuple)
            else f"{origin}:{line}" if line else origin)


def format_validation_error(
    error: ValidationError,
    model_cls: type[BaseModel],
    origin: str,
    lines: Optional[dict[tuple, Any]] = None,
    separator: str = "; ",
) -> str:
    """``origin:line: [a -> b] message (given: value)`` for each problem, joined by ``separator``.

    ``lines`` maps key paths to a line number, a ``(file, line)`` pair (a key an included file gives) or a label
    such as ``--set KEY``.
    """
    messages = []
    items = error.errors()
    # a missing required key that an unknown key beside it misspells is said once, as the typo (--set
    # cost.metrc=macs said "[cost -> metric] Field required" beside it)
    meant = set()
    for item in items:
        if item["type"] == "extra_forbidden":
            guess = suggest(str(item["loc"][-1]), model_fields(model_cls, tuple(item["loc"][:-1])))
            if guess:
                meant.add(tuple(item["loc"][:-1]) + (guess.split("'")[1],))
    items = [item for item in items if not (item["type"] == "missing" and tuple(item["loc"]) in meant)]
    said_missing: set[tuple] = set()
    for item in items:
        loc = tuple(item["loc"])
        where = " -> ".join(str(p) for p in loc) or "top level"
        line = None
        if lines:
            for cut in range(len(loc), 0, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
            # a --set inside the failing part (an unknown section it made, a check across fields it changed) is
            # what the user changed last: name it rather than the file's line
            labels = [label for key, label in lines.items()
                      if isinstance(label, str) and loc and key[: len(loc)] == loc and len(key) > len(loc)]
            if not loc:  # a check across sections names its fields (search.warmup_epochs): where each was given
                named = [key for key in lines if len(key) > 1 and _names(item["msg"], ".".join(map(str, key)))]
                given = [lines[key] for key in named]  # the --set of each, and the first line of the file's
                labels = [_place(g, origin) for g in given if not isinstance(g, str)][:1] + \
                    [g for g in given if isinstance(g, str)]
                where = ", ".join(".".join(map(str, key)) for key in named) or where
            if labels and not isinstance(line, str):
                line = ", ".join(labels)
        place = _place(line, origin)
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "model_type":  # "a valid dictionary or instance of DataConfig": a class name users never see
            msg = "expected a section (keys with values beneath it)"
        if item["type"] == "missing" and loc:  # a section's missing keys, said once: "[cost] missing: a, b"
            if loc[:-1] in said_missing:
                continue
            said_missing.add(loc[:-1])
            absent = [str(i["loc"][-1]) for i in items if i["type"] == "missing" and tuple(i["loc"][:-1]) == loc[:-1]]
            where = " -> ".join(str(p) for p in loc[:-1]) or "top level"
            shown = ", ".join(absent[:6]) + (f" and {len(absent) - 6} more" if len(absent) > 6 else "")
            msg = f"required key{'s' if len(absent) > 1 else ''} missing: {shown}"
        if item["type"] == "extra_forbidden":
            valid = model_fields(model_cls, loc[:-1])
            msg = f"unknown key{suggest(str(loc[-1]), valid)}; valid keys here: {', '.join(valid)}"
        elif "input" in item and item["type"] != "missing" and not isinstance(item["input"], dict):
            msg = f"{msg} (given: {_given(item['input'])})"
        messages.append(f"{place}: [{where}] {msg}")
    return separator.join(messages)

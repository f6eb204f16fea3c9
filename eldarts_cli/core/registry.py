"""One ``Registry`` type, several instances (ops, datasets, genotypes, ...).

Modelled on timm's and torchvision's registries: a decorator fills the
registry when the defining module is imported, registering a name twice
raises, and an unknown name gets a "did you mean ...?" suggestion.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import EldartsError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not close:
        lowered = {c.lower().replace("-", "_"): c for c in choices}
        key = name.lower().replace("-", "_")
        if key in lowered:
            close = [lowered[key]]
    return f" (did you mean '{close[0]}'?)" if close else ""


class UnknownNameError(EldartsError, KeyError, ValueError):
    """A name that is not in a registry.

    A ``ValueError`` too, so that a pydantic validator that looks a name up
    turns the registry's message (with its suggestion) into a validation error.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named mapping from strings to objects, filled by ``@registry.register``."""

    def __init__(self, kind: str, fold: Callable[[str], str] | None = None):
        """``fold`` maps a name to a lookup key (e.g. case-insensitive): ``get`` then accepts any spelling
        that folds to a registered name's key."""
        self.kind = kind
        self.fold = fold
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare as a decorator it takes ``obj.__name__``."""

        def add(item: T) -> T:
            key = name or getattr(item, "__name__")
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._items[key] = item
            return item

        if obj is not None:
            return add(obj)
        return add

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name``; :class:`UnknownNameError` (with a suggestion) if none."""
        if name in self._items:
            return name
        if self.fold is not None:
            key = self.fold(name)
            for known in self._items:
                if self.fold(known) == key:
                    return known
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'{suggest(name, list(self._items))}; known: {', '.join(self._items)}"
        )

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        if self.fold is None or not isinstance(name, str):
            return False
        return any(self.fold(known) == self.fold(name) for known in self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

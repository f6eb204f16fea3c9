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


class UnknownNameError(EldartsError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named mapping from strings to objects, filled by ``@registry.register``."""

    def __init__(self, kind: str):
        self.kind = kind
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

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{suggest(name, list(self._items))}; "
                f"known: {', '.join(self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

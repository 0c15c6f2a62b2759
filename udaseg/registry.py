"""Name -> factory tables for methods, models and datasets.

A registry is a dict with a decorator; nothing is built from strings beyond one lookup, and an
unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from udaseg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name: str) -> T:
        _import_builtins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        _import_builtins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        _import_builtins()
        return name in self._entries


METHODS: Registry = Registry("method")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")


def _import_builtins() -> None:
    """Import the modules that register the built-in entries (once; cheap afterwards)."""
    import udaseg.data.datasets  # noqa: F401
    import udaseg.methods  # noqa: F401
    import udaseg.models  # noqa: F401

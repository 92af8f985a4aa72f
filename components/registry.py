"""A small name -> factory registry shared by models, losses and TTA views."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from components.errors import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; refuses duplicates and lists the valid names for unknown ones.

    Args:
        kind: what the registry holds, used in error messages ("loss", "backbone", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``factory`` under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def add(factory: T) -> T:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> T:
        """The factory registered under ``name``.

        Raises:
            ValueError: naming the valid choices and the closest match when ``name`` is unknown.
        """
        try:
            return self._factories[name]
        except KeyError:
            valid = ", ".join(sorted(self._factories))
            hint = did_you_mean(name, self._factories)
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {valid}.{hint}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

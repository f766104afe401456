"""Name -> factory registries, one per kind (datasets, models, attacks, defenses).

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``: register once and the CLI, the Python
API, the benchmarks and the contract tests all pick the entry up. An entry may name its factory as
``"module:attribute"`` so that listing the registry imports nothing heavy (the CLI starts without torch).
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, Generic, TypeVar

from .errors import UnlearnableError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T] | str] = {}
        self._help: dict[str, str] = {}

    def add(self, name: str, factory: Callable[..., T] | str, help: str = "") -> None:
        """Register ``factory`` (a callable, or ``"package.module:attribute"`` imported on first use)."""
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = factory
        if not help and callable(factory):
            help = ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        self._help[name] = help

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator form of :meth:`add`: ``@ATTACKS.register("my-attack")``."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(name, factory, help)
            return factory

        return wrap

    def check(self, name: str) -> None:
        """Raise the one-line error for an unknown ``name``, importing nothing."""
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise UnlearnableError(f"unknown {self.kind} {name!r}; known: {known}")

    def get(self, name: str) -> Callable[..., T]:
        self.check(name)
        factory = self._entries[name]
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
            self._entries[name] = factory
        return factory

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

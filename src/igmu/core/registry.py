"""Typed registries filled by decorator, found one way, with "did you mean" on a miss.

Every plugin kind (metrics, detectors, methods, attacks and probes, model families, pipeline
classes, worlds) has one `Registry`. A plugin is a module whose decorated definitions register
themselves when it is imported; a registry imports, on its first lookup:

- every module of its *home* package (``igmu.metrics`` for metrics, ...): adding a built-in
  plugin is adding a file there, with no list to keep in step;
- every module named by an entry point of its *group* (``igmu.<kind>``) in the installed
  packages' metadata: how a plugin outside the home package registers, igmu's own MiniWorld
  (``pyproject.toml``) as much as a third party's.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from igmu.core.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Known: {', '.join(sorted(known)) or '(none)'}."


def entry_point_modules(group: str) -> list[str]:
    """The modules the installed packages declare for an entry-point group, sorted."""
    from importlib.metadata import entry_points

    return sorted({ep.value.split(":", 1)[0].strip() for ep in entry_points(group=group)})


def import_package_modules(package: str) -> None:
    """Import every module of ``package`` (not its sub-packages' modules; none starting with
    ``_``)."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """``kind`` names the items in messages; ``home`` is the package whose modules are the
    built-in plugins; ``group`` the entry-point group of plugins elsewhere."""

    def __init__(self, kind: str, home: str | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.home = home
        self.group = group
        self._items: dict[str, T] = {}
        self._discovered = home is None and group is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return decorator

    def discover(self) -> None:
        """Import the home package's modules and the group's plugin modules, once."""
        if self._discovered:
            return
        self._discovered = True  # a plugin that looks something up while importing sees a part
        if self.home:
            import_package_modules(self.home)
        if self.group:
            for module in entry_point_modules(self.group):
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, list(self._items))}"
                f"{self._plugin_hint()}"
            ) from None

    def _plugin_hint(self) -> str:
        if self.group and not entry_point_modules(self.group) and self.home is None:
            return (
                f" No plugin declares entry points of group {self.group!r}: is igmu installed "
                "(pip install -e .)? Plugins are found through the installed package metadata."
            )
        return ""

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

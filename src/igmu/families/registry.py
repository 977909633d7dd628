"""The registry of model families and the detection of a pipeline's family.

Every module of the `igmu.families` package is imported on first use, so adding a family is adding
one file there (a `FamilyAdapter` subclass decorated with `register_family`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from igmu.core.errors import ConfigError
from igmu.core.registry import Registry

FAMILIES: Registry[type] = Registry("model family")
_NOT_FAMILIES = {"base", "registry"}
_loaded = False


def register_family(cls: type) -> type:
    FAMILIES.register(cls.name)(cls)
    return cls


def load_families() -> Registry[type]:
    """Import every family module of this package once (they register themselves)."""
    global _loaded
    if not _loaded:
        import igmu.families as package

        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in _NOT_FAMILIES:
                importlib.import_module(f"{package.__name__}.{info.name}")
        _loaded = True
    return FAMILIES


def family_of(pipeline: Any, reference: str = "<in-memory pipeline>") -> Any:
    """The adapter of the first family that accepts ``pipeline``; a ConfigError naming every
    family and why it declined, when none does."""
    families = load_families()
    reasons = []
    for name in families.names():
        cls = families.get(name)
        if cls.matches(pipeline):
            return cls(pipeline)
        problems = cls.problems(pipeline) if hasattr(cls, "problems") else []
        reasons.append(f"{name}: {'; '.join(problems) or 'does not match'}")
    raise ConfigError(
        f"{reference}: no model family igmu knows fits this {type(pipeline).__name__} "
        f"({' | '.join(reasons)}). Known families: {', '.join(families.names())}."
    )

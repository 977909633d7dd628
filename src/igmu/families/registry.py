"""The registry of model families and the detection of a pipeline's family.

Adding a family is adding one file to `igmu.families` (a `FamilyAdapter` subclass decorated with
`register_family`): the registry imports the package's modules on first use.
"""

from __future__ import annotations

from typing import Any

from igmu.core.errors import ConfigError
from igmu.core.registry import Registry

FAMILIES: Registry[type] = Registry("model family", home="igmu.families", group="igmu.families")


def register_family(cls: type) -> type:
    FAMILIES.register(cls.name)(cls)
    return cls


def family_of(pipeline: Any, reference: str = "<in-memory pipeline>") -> Any:
    """The adapter of the first family that accepts ``pipeline``; a ConfigError naming every
    family and why it declined, when none does."""
    families = FAMILIES
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

"""The `World` interface and its registry.

What a world gives the engine:

- ``models(task_name)``: the models-file values its tasks use when no ``--models`` file is given
  (its shipped text-to-image model, CLIP, feature extractor; ``RETRAIN`` where it ships one);
- ``models_fields``: models-file fields of its own (with defaults) and which of their keys are
  paths, so a models file may configure the world (e.g. other judge weights);
- ``features(models)``: its own image feature extractor (models files select it with
  ``fid: {kind: <world>}`` and ``lpips: {net: <world>}``);
- ``true_images(prompts, seeds)``: the exact image a prompt describes, where the world has an
  oracle (``has_oracle``), for metrics against the truth (``fid_world``) and datasets drawn by
  the renderer;
- ``weight_paths()``: the files its shipped models live in (a warm rerun's identity);
- ``task_texts()``: its task files, generated (what ``tasks/builtin`` must hold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from igmu.core.errors import ConfigError
from igmu.core.registry import Registry


class World:
    """Base of a registered world; subclasses set the class attributes and the methods their
    world supports (an unsupported one raises ConfigError naming the world)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    version: ClassVar[int] = 1  # bump when the world draws differently (joins fingerprints)
    has_oracle: ClassVar[bool] = False
    # models-file fields this world adds: field -> default value; and path keys per field
    models_fields: ClassVar[dict[str, Any]] = {}
    path_fields: ClassVar[dict[str, tuple[str, ...]]] = {}

    def models(self, task_name: str | None = None) -> dict[str, Any]:
        raise ConfigError(f"world {self.name!r} ships no models")

    def features(self, models: Any) -> Any:
        raise ConfigError(f"world {self.name!r} has no feature extractor of its own")

    def true_images(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        raise ConfigError(f"world {self.name!r} has no oracle: it cannot draw a prompt's truth")

    def weight_paths(self) -> list[Path]:
        return []

    def task_texts(self) -> dict[str, str]:
        return {}


WORLDS: Registry[World] = Registry("world", home="igmu.worlds", group="igmu.worlds")


def register_world(cls: type[World]) -> type[World]:
    WORLDS.register(cls.name)(cls())
    return cls


def get_world(name: str) -> World:
    return WORLDS.get(name)


def world_of(task: Any) -> World | None:
    """The world a task belongs to, or None for a task of the real world."""
    name = getattr(task, "world", None)
    return get_world(name) if name else None

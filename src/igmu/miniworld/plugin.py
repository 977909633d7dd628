"""The MiniWorld as an igmu world (entry point ``igmu.worlds: miniworld``): its shipped models,
its judges' features, its renderer as the oracle, its task files. Implementation modules load
only when a method is called, so finding the world costs nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.worlds.base import World, register_world

MODELS_FIELD = "miniworld"


@register_world
class MiniWorld(World):
    name = "miniworld"
    summary = (
        "procedural shapes, colours, textures, a white spot and backgrounds; a renderer that "
        "draws any caption exactly, a tiny CLIP, a tiny text-to-image model and judges"
    )
    version = 1  # igmu.miniworld.world.WORLD_VERSION (checked by the tests)
    has_oracle = True
    # the judges' weights (null = the ones shipped with igmu)
    models_fields = {MODELS_FIELD: {"judges": None}}
    path_fields = {MODELS_FIELD: ("judges",)}

    def models(self, task_name: str | None = None) -> dict[str, Any]:
        from igmu.miniworld.shipped import world_models

        return world_models(task_name=task_name)

    def features(self, models: Any) -> Any:
        """The judges' penultimate-layer features (FID and LPIPS share them)."""
        from igmu.miniworld.judge_detector import load_judges, resolve_judges_dir
        from igmu.miniworld.judges import JudgeFeatures

        return JudgeFeatures(load_judges(resolve_judges_dir(models)))

    def true_images(self, prompts: list[str], seeds: list[int], size: int | None = None
                    ) -> list[np.ndarray]:
        from igmu.miniworld.oracle import oracle_image, parse_caption

        images = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            if "shape" not in parse_caption(prompt):
                raise ConfigError(
                    f"{prompt!r} names no MiniWorld shape: the MiniWorld's renderer cannot "
                    "draw it (only MiniWorld prompts have a true image)"
                )
            images.append(oracle_image(prompt, seed, size=size or 32))
        return images

    def weight_paths(self) -> list[Path]:
        from igmu.miniworld.shipped import WEIGHTS

        return [WEIGHTS]

    def task_texts(self) -> dict[str, str]:
        from igmu.miniworld.task_files import TASKS

        return {name: build() for name, build in TASKS.items()}

"""The MiniWorld's shipped models, and the models file a MiniWorld task uses by default.

Every command (generate, unlearn, evaluate, attack, demo) uses these for a task whose YAML says
``world: miniworld`` when no ``--models`` file is given; ``igmu models --world mini`` prints
them as a models file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from igmu.core.errors import ModelNotFoundError

WEIGHTS = Path(__file__).parent / "weights"
# How the demo and every MiniWorld default generate: 8 DDIM steps draw as well as 25 in this
# world at guidance 2 (docs/design/miniworld.md), 32 x 32 pixels.
GENERATION = {"steps": 8, "guidance": 2.0, "height": 32, "width": 32}


def shipped_models() -> tuple[Path, Path]:
    """(text-to-image pipeline folder, CLIP folder) shipped with igmu."""
    t2i, clip = WEIGHTS / "t2i", WEIGHTS / "clip"
    for path, what, marker in (
        (t2i, "text-to-image pipeline", "model_index.json"),
        (clip, "CLIP", "config.json"),
    ):
        if not (path / marker).is_file():
            raise ModelNotFoundError(
                f"the MiniWorld {what} is not at {path}; this install has no shipped MiniWorld "
                "weights. Train them with `igmu miniworld train --out DIR` and copy DIR/t2i and "
                "DIR/clip there."
            )
    return t2i, clip


def world_models(
    methods: dict[str, Any] | None = None, task_name: str | None = None
) -> dict[str, Any]:
    """The models-file fields of the MiniWorld (absolute paths), plus ``methods``; for a task
    whose RETRAIN model ships (the model trained without the concept), ``RETRAIN`` too."""
    from igmu.core.constants import RETRAIN
    from igmu.miniworld.retrain import retrain_model_dir

    t2i, clip = shipped_models()
    known = dict(methods or {})
    retrained = retrain_model_dir(task_name) if task_name else None
    if retrained is not None:
        known.setdefault(RETRAIN, str(retrained))
    return {
        "clip_detector": str(clip),
        "clip_score": str(clip),
        "fid": {"kind": "miniworld"},
        "lpips": {"net": "miniworld"},
        "generator": {"model": str(t2i), **GENERATION},
        "methods": known,
    }

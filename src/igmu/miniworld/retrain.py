"""RETRAIN in the MiniWorld: the text-to-image model trained from scratch on a world without the
task's concept, the gold standard an unlearning method is compared against.

ORG and RETRAIN differ only in the concept's data: the same schedule, seed, caption mix and
frozen tiny CLIP; RETRAIN's scene pool is ORG's with the concept redrawn away
(``world.redraw_without``), so it is never rendered and no caption ever names it.
``train_t2i`` trains one with ``T2IConfig(without=concept_of(task))``; the shipped ones live in
``igmu/miniworld/weights/retrain/<task>/`` (a ``MiniWorldPipeline`` folder whose
``igmu_t2i.json`` records ``world.without``).

``retrain_model_dir(task)`` is what the rest of igmu asks: the shipped RETRAIN pipeline of a mini
task, or None where there is none.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from igmu.core.errors import ConfigError, ModelNotFoundError

DETECTOR = "mini_judge"


def default_retrain_root() -> Path:
    """Where the shipped RETRAIN pipelines live, one folder per task."""
    return Path(str(resources.files("igmu.miniworld").joinpath("weights", "retrain")))


def concept_of(task_name: str) -> str:
    """The MiniWorld target a mini task erases (``shape=cross``, ``style=stripes``,
    ``attribute``), read from the task file's ``mini_judge`` detector."""
    from igmu.miniworld.world import parse_target
    from igmu.tasks import load_task

    task = load_task(task_name)
    specs = [str(s) for s in task.guidance.get("detectors", [])]
    targets = [s.partition(":")[2] for s in specs if s.partition(":")[0] == DETECTOR]
    if len(targets) != 1:
        raise ConfigError(
            f"task {task_name!r}: RETRAIN needs a MiniWorld task whose guidance.detectors names "
            f"exactly one {DETECTOR}:<target> (found {specs})"
        )
    try:
        parse_target(targets[0])
    except ValueError as error:
        raise ConfigError(f"task {task_name!r}: guidance.detectors: {error}") from error
    return targets[0]


def retrain_model_dir(task_name: str, root: str | Path | None = None) -> Path | None:
    """The RETRAIN pipeline folder for a mini task, or None when none is shipped (any other task,
    or weights not yet trained). ``root``: look there instead of the shipped weights.

    Raises ModelNotFoundError when a folder is there but was not trained without the task's
    concept (its ``igmu_t2i.json`` field ``world.without`` says otherwise).
    """
    from igmu.miniworld.t2i_model import METADATA

    folder = Path(root) if root is not None else default_retrain_root()
    folder = folder / task_name
    if not (folder / "model_index.json").is_file():
        return None
    metadata_path = folder / METADATA
    if not metadata_path.is_file():
        raise ModelNotFoundError(f"{folder}: RETRAIN pipeline without {METADATA}")
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    recorded = (metadata.get("world") or {}).get("without")
    expected = concept_of(task_name)
    if recorded != expected:
        raise ModelNotFoundError(
            f"{metadata_path}: field world.without is {recorded!r}, but RETRAIN for "
            f"{task_name} must be trained without {expected!r}"
        )
    return folder

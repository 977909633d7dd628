"""Import IGMU's prompt JSON files ({task: {class: [prompt, ...]}})."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from igmu.core.errors import ConfigError
from igmu.core.files import read_text
from igmu.core.registry import did_you_mean
from igmu.tasks.model import PromptSet, Task


def read_prompt_json(path: Path) -> dict[str, dict[str, list[str]]]:
    if not path.is_file():
        raise ConfigError(f"{path}: IGMU prompt file does not exist")
    try:
        data = json.loads(read_text(path, "IGMU prompt file"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {{task: {{class: [prompts]}}}}")
    for task_key, classes in data.items():
        if not isinstance(classes, dict):
            raise ConfigError(f"{path}: field {task_key!r} must map class -> list of prompts")
        for class_name, prompts in classes.items():
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise ConfigError(f"{path}: field '{task_key}.{class_name}' must be a list of text")
    return data


def _prompt_set(name: str, classes: dict[str, list[str]], source: str) -> PromptSet:
    return PromptSet(
        name=name,
        classes=tuple((c, tuple(p)) for c, p in classes.items()),
        description=f"imported from {source}",
    )


def with_igmu_prompts(task: Task, folder: Path) -> Task:
    """The task with forget/stripped/unrelated prompt sets taken from forgot.json/retain.json.

    Used to score images made with the official prompts: the i_j_k indices in file names then
    point at the prompt texts the images were generated from.
    """
    if not task.igmu_key:
        raise ConfigError(f"task {task.name!r} has no 'igmu.key', so IGMU prompts cannot map to it")
    forgot = read_prompt_json(folder / "forgot.json")
    retain = read_prompt_json(folder / "retain.json")
    for name, data in (("forgot.json", forgot), ("retain.json", retain)):
        if task.igmu_key not in data:
            raise ConfigError(
                f"{folder / name}: no entry {task.igmu_key!r}."
                f"{did_you_mean(task.igmu_key, list(data))}"
            )
    sets = dict(task.prompt_sets)
    sets["forget"] = _prompt_set("forget", forgot[task.igmu_key], str(folder / "forgot.json"))
    retain_set = "stripped" if task.reference == "stripped" else "unrelated"
    sets[retain_set] = replace(
        _prompt_set(retain_set, retain[task.igmu_key], str(folder / "retain.json")), name=retain_set
    )
    if retain_set == "unrelated":
        from igmu.tasks.loader import derive_stripped

        sets["stripped"] = derive_stripped(sets["forget"], task.concept_words)
    return replace(task, prompt_sets=sets)

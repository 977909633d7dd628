"""Read image sets: the official IGMU folder layout, or a JSONL manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

from igmu.dataset.images import is_image_file
from igmu.dataset.records import ImageKey, ImageRecord
from igmu.errors import ConfigError, PairingError
from igmu.registry import did_you_mean
from igmu.tasks.model import PROMPT_SET_KINDS, Task

# Official folder name -> our prompt-set name; the last three are IGMU extensions.
IGMU_FOLDERS = {
    "forgot": "forget",
    "remove_word": "stripped",
    "unrelated": "unrelated",
    "related": "related",
    "multilingual": "multilingual",
    "paraphrase": "paraphrase",
}
# Sets whose images live in <set>/<METHOD>/<Class>/ rather than <set>/<METHOD>/.
CLASS_FOLDER_SETS = {"unrelated", "related", "multilingual", "paraphrase"}
FILE_KEY = re.compile(r"^(\d+)_(\d+)_(\d+)$")
MANIFEST_FIELDS = ("method", "prompt_set", "class_name", "prompt_index", "seed", "prompt", "path")


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _prompt_text(task: Task, set_name: str, class_index: int, prompt_index: int, where: str) -> str:
    prompt_set = task.prompt_set(set_name)
    if class_index >= len(prompt_set.classes):
        raise PairingError(
            f"{where}: class index {class_index} is out of range: task {task.name!r} prompt set "
            f"{set_name!r} has {len(prompt_set.classes)} classes"
        )
    class_name, prompts = prompt_set.classes[class_index]
    if prompt_index >= len(prompts):
        raise PairingError(
            f"{where}: prompt index {prompt_index} is out of range: class {class_name!r} of "
            f"prompt set {set_name!r} has {len(prompts)} prompts"
        )
    return prompts[prompt_index]


def _read_method_folder(
    task: Task, set_name: str, method: str, folder: Path, class_folder: str | None
) -> list[ImageRecord]:
    records = []
    unexpected = []
    prompt_set = task.prompt_set(set_name)
    for path in _visible_files(folder):
        match = FILE_KEY.match(path.stem)
        if path.is_dir() or not is_image_file(path) or not match:
            unexpected.append(path.name)
            continue
        class_index, prompt_index, seed = (int(g) for g in match.groups())
        if class_folder is not None:
            expected = prompt_set.class_index(class_folder)
            if expected is None:
                raise PairingError(
                    f"{folder}: class folder {class_folder!r} is not a class of prompt set "
                    f"{set_name!r} of task {task.name!r}."
                    f"{did_you_mean(class_folder, prompt_set.class_names())}"
                )
            if expected != class_index:
                raise PairingError(
                    f"{path}: file says class index {class_index} but {class_folder!r} is class "
                    f"{expected} of prompt set {set_name!r}; the prompt text would be wrong "
                    "(use --igmu-prompts with the prompt JSON the images were made from)"
                )
        text = _prompt_text(task, set_name, class_index, prompt_index, str(path))
        class_name = prompt_set.classes[class_index][0]
        key = ImageKey(set_name, class_name, prompt_index, seed)
        records.append(ImageRecord(method=method, key=key, prompt=text, path=str(path)))
    if unexpected:
        raise PairingError(
            f"{folder}: {len(unexpected)} file(s) are not images named <class>_<prompt>_<seed> "
            f"(.png/.jpg/...): {', '.join(unexpected[:10])}"
        )
    return records


def read_igmu_layout(root: Path, task: Task) -> list[ImageRecord]:
    """Read ``<root>/forgot/<M>/i_j_k.png``, ``remove_word/<M>/...``, ``unrelated/<M>/<C>/...``."""
    if not root.is_dir():
        raise ConfigError(f"--images {root}: not a directory")
    if not (root / "forgot").is_dir():
        raise ConfigError(
            f"--images {root}: expected the IGMU layout <concept>/forgot/<METHOD>/<i>_<j>_<k>.png; "
            f"{root / 'forgot'} does not exist"
        )
    records: list[ImageRecord] = []
    for folder_name, set_name in IGMU_FOLDERS.items():
        set_root = root / folder_name
        if not set_root.is_dir():
            continue
        if set_name not in task.prompt_sets:
            raise ConfigError(
                f"{set_root}: task {task.name!r} has no prompt set {set_name!r} for these images"
            )
        for method_dir in _visible_files(set_root):
            if not method_dir.is_dir():
                raise PairingError(f"{method_dir}: expected a method folder, found a file")
            method = method_dir.name
            if set_name in CLASS_FOLDER_SETS:
                for class_dir in _visible_files(method_dir):
                    if not class_dir.is_dir():
                        raise PairingError(
                            f"{class_dir}: expected a class folder under {method_dir}"
                        )
                    records += _read_method_folder(
                        task, set_name, method, class_dir, class_dir.name
                    )
            else:
                records += _read_method_folder(task, set_name, method, method_dir, None)
    if not records:
        raise ConfigError(f"--images {root}: no images found")
    return records


def _manifest_value(row: dict, name: str, kind: type, where: str) -> object:
    if name not in row:
        raise ConfigError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def read_manifest(path: Path, task: Task) -> list[ImageRecord]:
    """Read a JSONL manifest; ``path`` fields are relative to the manifest's folder."""
    if not path.is_file():
        raise ConfigError(f"--images {path}: manifest file does not exist")
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: each line must be a JSON object")
            kinds = {"prompt_index": int, "seed": int}
            values = {f: _manifest_value(row, f, kinds.get(f, str), where) for f in MANIFEST_FIELDS}
            if values["prompt_set"] not in PROMPT_SET_KINDS:
                raise ConfigError(
                    f"{where}: field 'prompt_set' is {values['prompt_set']!r}."
                    f"{did_you_mean(str(values['prompt_set']), list(PROMPT_SET_KINDS))}"
                )
            if values["prompt_set"] not in task.prompt_sets:
                raise ConfigError(
                    f"{where}: field 'prompt_set' is {values['prompt_set']!r}, which task "
                    f"{task.name!r} does not define (it has: {', '.join(task.prompt_sets)})"
                )
            image_path = Path(str(values["path"]))
            if not image_path.is_absolute():
                image_path = path.parent / image_path
            key = ImageKey(
                str(values["prompt_set"]),
                str(values["class_name"]),
                int(values["prompt_index"]),  # type: ignore[arg-type]
                int(values["seed"]),  # type: ignore[arg-type]
            )
            records.append(
                ImageRecord(str(values["method"]), key, str(values["prompt"]), str(image_path))
            )
    if not records:
        raise ConfigError(f"--images {path}: manifest has no rows")
    return records

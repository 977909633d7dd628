"""Read image sets: the official IGMU folder layout, or a JSONL manifest."""

from __future__ import annotations

import re
from pathlib import Path

from igmu.core.constants import ATTACK_SET_PREFIX, PROMPT_SET_KINDS, is_attack_set
from igmu.core.errors import ConfigError, PairingError
from igmu.core.files import read_jsonl
from igmu.core.images import is_image_file
from igmu.core.records import ImageKey, ImageRecord
from igmu.core.registry import did_you_mean
from igmu.tasks.model import Task

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
MAX_SEED = 2**63 - 1  # SQLite INTEGER, where every score's key is stored
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
        if seed > MAX_SEED:
            raise PairingError(f"{path}: seed {seed} in the file name is above {MAX_SEED} (the "
                               "result store's integers)")
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


def layout_hint(root: Path) -> str:
    """What the user probably meant when ``root`` is not an IGMU concept folder."""
    if root.is_file() and root.suffix == ".jsonl":
        return " It is a JSONL file: pass --layout manifest (or leave --layout at auto)."
    if root.is_dir():
        below = sorted(p.parent for p in root.glob("*/forgot") if p.is_dir())
        if below:
            names = ", ".join(str(p) for p in below[:3])
            return f" Concept folders below it: {names}; give one of them as --images."
        if (root / "manifest.jsonl").is_file():
            return f" It holds a manifest: --images {root / 'manifest.jsonl'}."
    return ""


def read_igmu_layout(
    root: Path, task: Task, allow_outside_paths: bool = False
) -> list[ImageRecord]:
    """Read ``<root>/forgot/<M>/i_j_k.png``, ``remove_word/<M>/...``, ``unrelated/<M>/<C>/...``;
    paths are stored absolute; a file that is a link to outside ``root`` is refused unless
    ``allow_outside_paths``."""
    if not root.is_dir():
        raise ConfigError(f"--images {root}: not a directory.{layout_hint(root)}")
    if not (root / "forgot").is_dir():
        raise ConfigError(
            f"--images {root}: expected the IGMU layout <concept>/forgot/<METHOD>/<i>_<j>_<k>.png; "
            f"{root / 'forgot'} does not exist.{layout_hint(root)}"
        )
    root = root.absolute()
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
    if not allow_outside_paths:
        for rec in records:
            if not inside(Path(rec.path), root):
                raise ConfigError(
                    f"{rec.path}: a link to {Path(rec.path).resolve()}, outside --images {root}; "
                    "pass --allow-outside-paths to score images elsewhere"
                )
    return records


def _manifest_value(row: dict, name: str, kind: type, where: str) -> object:
    if name not in row:
        raise ConfigError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symbolic links followed) lies in ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def _manifest_key(row: dict, task: Task, where: str) -> ImageKey:
    """The row's key, checked against the task: prompt set, class, prompt index, seed."""
    kinds = {"prompt_index": int, "seed": int}
    values = {f: _manifest_value(row, f, kinds.get(f, str), where) for f in MANIFEST_FIELDS}
    set_name = str(values["prompt_set"])
    attack = is_attack_set(set_name)
    if not attack and set_name not in PROMPT_SET_KINDS:
        raise ConfigError(
            f"{where}: field 'prompt_set' is {set_name!r}."
            f"{did_you_mean(set_name, list(PROMPT_SET_KINDS))} (attack images use "
            f"'{ATTACK_SET_PREFIX}<attack>')"
        )
    # Attack images are adversarial prompts found for the task's forget prompts.
    source = "forget" if attack else set_name
    if source not in task.prompt_sets:
        raise ConfigError(
            f"{where}: field 'prompt_set' is {set_name!r}, which task {task.name!r} does not "
            f"define (it has: {', '.join(task.prompt_sets)})"
        )
    prompt_set = task.prompt_sets[source]
    class_name = str(values["class_name"])
    class_index = prompt_set.class_index(class_name)
    if class_index is None:
        raise ConfigError(
            f"{where}: field 'class_name' is {class_name!r}, not a class of prompt set "
            f"{source!r} of task {task.name!r}.{did_you_mean(class_name, prompt_set.class_names())}"
        )
    class_name = prompt_set.classes[class_index][0]
    index, seed = int(values["prompt_index"]), int(values["seed"])  # type: ignore[arg-type]
    count = len(prompt_set.classes[class_index][1])
    if not 0 <= index < count:
        raise ConfigError(
            f"{where}: field 'prompt_index' is {index}, out of range: class {class_name!r} of "
            f"prompt set {source!r} has {count} prompts (0..{count - 1})"
        )
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{where}: field 'seed' must lie in 0..{MAX_SEED} (the result "
                          f"store's integers), got {seed}")
    expected = prompt_set.text(class_index, index)
    if not attack and values["prompt"] != expected:
        raise ConfigError(
            f"{where}: field 'prompt' is {values['prompt']!r}, but task {task.name!r} "
            f"(version {task.version}) has {expected!r} at {source}/{class_name}/{index}: were "
            "the images made from another version of the task, or another task?"
        )
    return ImageKey(set_name, class_name, index, seed)


def read_manifest(path: Path, task: Task, allow_outside_paths: bool = False) -> list[ImageRecord]:
    """Read a JSONL manifest, every row checked against the task (so the images of one key share
    one prompt); ``path`` fields are relative to the manifest's folder, and a path outside that
    folder is refused unless ``allow_outside_paths`` (a report embeds every image it scores)."""
    if not path.is_file():
        raise ConfigError(f"--images {path}: manifest file does not exist")
    folder = path.parent.resolve()
    records = []
    for where, row in read_jsonl(path, "manifest"):
        key = _manifest_key(row, task, where)
        method = _manifest_value(row, "method", str, where)
        for name in ("method", "path"):
            if CONTROL.search(str(row[name])):
                raise ConfigError(f"{where}: field {name!r} holds a control character "
                                  f"(NUL, newline, ...): {row[name]!r}")
        image_path = Path(str(_manifest_value(row, "path", str, where))).expanduser()
        if not image_path.is_absolute():
            image_path = folder / image_path
        if not allow_outside_paths and not inside(image_path, folder):
            raise ConfigError(
                f"{where}: field 'path' is {row['path']!r}, outside the manifest's folder "
                f"{folder}; pass --allow-outside-paths to score images elsewhere"
            )
        records.append(
            ImageRecord(str(method), key, str(row["prompt"]), str(image_path.resolve()))
        )
    if not records:
        raise ConfigError(f"--images {path}: manifest has no rows")
    return records

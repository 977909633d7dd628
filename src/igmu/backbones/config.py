"""The models file: which network or weights file plays each role (YAML, one field per role)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from igmu.core.constants import ORG
from igmu.core.errors import ConfigError
from igmu.core.files import read_text
from igmu.core.registry import did_you_mean
from igmu.core.yamlio import load_yaml

DEFAULTS: dict[str, Any] = {
    # CLIP whose projected image embedding feeds the IGMU detector heads (512-d).
    "clip_detector": "openai/clip-vit-base-patch32",
    # CLIP for CLIP score and CSDR.
    "clip_score": "openai/clip-vit-base-patch16",
    # FID features: Inception-v3 (FID weights file) or a CLIP image tower.
    "fid": {"kind": "inception", "weights": None},
    # LPIPS: the lpips package's linear heads + a torchvision backbone state dict.
    "lpips": {"net": "alex", "backbone_weights": None},
    # Detector heads for the clip_head judge, by IGMU head name.
    "heads": {},
    # Detector settings (thresholds, label subsets), by detector name; recorded with every score.
    "detectors": {},
    # Person detector for subject retention: yolo (ultralytics) or hog (OpenCV, offline fallback).
    "person": {"kind": "hog"},
    # `igmu generate`: the original model (ORG, a diffusers pipeline folder or hub id) and the
    # sampling settings every method is generated with.
    "generator": {
        "model": "CompVis/stable-diffusion-v1-4",
        "steps": 25,
        "guidance": 7.5,
        "height": 512,
        "width": 512,
    },
    # `igmu generate`: unlearned models by method name -> pipeline folder (or hub id), or a
    # mapping {base: pipeline (default generator.model), unet / text_encoder / checkpoint /
    # weights / lora / adapter: weights to apply, lora_scale, negative_prompt} (`model` is the
    # older name of `base`). ORG is `generator.model`; NEGPROMPT is built in (ORG with the
    # task's concept as negative prompt) unless named here. See igmu.pipelines.sources.
    "methods": {},
}
# Fields of a `methods` entry that name weights, in the order the loader applies them
# (igmu.pipelines.sources), and every field an entry may have.
WEIGHT_FIELDS = ("checkpoint", "unet", "text_encoder", "text_encoder_2", "weights", "lora",
                 "adapter")
LIST_FIELDS = ("weights", "lora", "adapter")
ENTRY_FIELDS = ("base", "model", *WEIGHT_FIELDS, "lora_scale", "negative_prompt")
# FID features: these, or a world's own (its name: igmu.worlds).
FID_KINDS = ("inception", "clip")


def world_fields() -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """(defaults, path keys) of the models-file fields the registered worlds add."""
    from igmu.worlds import WORLDS

    defaults: dict[str, Any] = {}
    paths: dict[str, tuple[str, ...]] = {}
    for name in WORLDS.names():
        world = WORLDS.get(name)
        defaults.update(world.models_fields)
        paths.update(world.path_fields)
    return defaults, paths


def all_defaults() -> dict[str, Any]:
    """Every models-file field with its default: igmu's and the worlds'."""
    return {**DEFAULTS, **world_fields()[0]}


def world_names() -> list[str]:
    from igmu.worlds import WORLDS

    return WORLDS.names()


@dataclass(frozen=True)
class ModelsConfig:
    values: dict[str, Any] = field(default_factory=all_defaults)
    source: str = "(built-in defaults)"

    def get(self, name: str) -> Any:
        return self.values[name]


# Where a models file names a file or folder (a Hugging Face id is allowed where models load
# from the hub). Keys of a mapping field are names (heads, methods); "*" means every key.
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "clip_detector": ("",),
    "clip_score": ("",),
    "fid": ("weights", "model"),
    "lpips": ("backbone_weights",),
    "heads": ("*", "*.path"),
    "person": ("weights",),
    "generator": ("model",),
    "methods": ("*", "*.model", "*.base", "*.checkpoint", "*.unet", "*.text_encoder",
                "*.text_encoder_2", "*.weights", "*.lora", "*.adapter"),
}


def resolve_path(value: str, base: Path) -> str:
    """A path in a models file, relative to the file's folder; a Hugging Face id stays as is.

    ``x/y`` is a path when it exists next to the file, else a hub id when it looks like one;
    anything else relative resolves against the file's folder (so errors name the full path).
    """
    from igmu.backbones.resolve import HUB_ID

    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    beside = (base / path).resolve()
    if value.startswith(("./", "../")) or beside.exists() or not HUB_ID.match(value):
        return str(beside)
    return value


def _absolute(field: str, value: Any, base: Path) -> Any:
    keys = PATH_FIELDS.get(field) or world_fields()[1].get(field, ())
    if isinstance(value, str):
        return resolve_path(value, base) if "" in keys or "*" in keys else value
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if isinstance(item, str) and (key in keys or "*" in keys):
            out[key] = resolve_path(item, base)
        elif isinstance(item, dict):
            nested = {}
            for k, v in item.items():
                if f"*.{k}" not in keys:
                    continue
                if isinstance(v, str):
                    nested[k] = resolve_path(v, base)
                elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                    nested[k] = [resolve_path(x, base) for x in v]
            out[key] = {**item, **nested}
        else:
            out[key] = item
    return out


def default_models_config(task: Any = None) -> ModelsConfig:
    """The models a command uses without --models: a task's own world's when it has one (the
    MiniWorld ships its models), else the defaults above (Hugging Face ids)."""
    from igmu.worlds import world_of

    world = world_of(task) if task is not None else None
    if world is not None:
        source = f"(the {world.name} world's shipped models)"
        return ModelsConfig(_validated(world.models(task.name), source), source)
    return ModelsConfig()


def load_models_config(path: str | Path | None, task: Any = None) -> ModelsConfig:
    """The models file at ``path``; without one, `default_models_config(task)`."""
    if path is None:
        return default_models_config(task)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--models {path}: file does not exist")
    try:
        raw = load_yaml(read_text(path, "models file")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a models file must be a mapping of role -> model")
    defaults = all_defaults()
    for key, value in raw.items():
        if key not in defaults:
            raise ConfigError(f"{path}: unknown field {key!r}.{did_you_mean(key, list(defaults))}")
        expected = type(defaults[key])
        if not isinstance(value, expected):
            raise ConfigError(
                f"{path}: field {key!r} must be {expected.__name__}, got {type(value).__name__}"
            )
    resolved = {key: _absolute(key, value, path.parent) for key, value in raw.items()}
    return ModelsConfig(_validated(resolved, str(path)), str(path))


def _validated(given: dict[str, Any], source: str) -> dict[str, Any]:
    """Defaults overlaid with ``given`` (already checked for unknown fields), validated."""
    path = source
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in all_defaults().items()}
    values.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in given.items()})
    for role, known in NESTED_FIELDS.items():
        for key in given.get(role) or {}:
            if key not in known:
                raise ConfigError(f"{path}: unknown field '{role}.{key}'."
                                  f"{did_you_mean(str(key), list(known))}")
    fid_kind = values["fid"].get("kind")
    kinds = (*FID_KINDS, *world_names())
    if fid_kind not in kinds:
        raise ConfigError(f"{path}: field 'fid.kind' must be one of {kinds}, got {fid_kind!r}")
    person_kind = values["person"].get("kind")
    if person_kind not in ("yolo", "hog"):
        raise ConfigError(
            f"{path}: field 'person.kind' must be 'yolo' or 'hog', got {person_kind!r}"
        )
    _validate_generation(values, path)
    return values


# Every field the mappings of these roles may hold (the person detector's: hog's and yolo's).
NESTED_FIELDS: dict[str, tuple[str, ...]] = {
    "fid": ("kind", "weights", "model"),
    "lpips": ("net", "backbone_weights"),
    "person": ("kind", "threshold", "max_side", "arch", "weights", "conf", "iou", "imgsz"),
}
GENERATOR_FIELDS = {"model": str, "steps": int, "guidance": float, "height": int, "width": int}
METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _validate_generation(values: dict[str, Any], path: str) -> None:
    """`generator` (merged over its defaults) and `methods` for `igmu generate`."""
    generator = {**DEFAULTS["generator"], **values["generator"]}
    for key, value in generator.items():
        if key not in GENERATOR_FIELDS:
            raise ConfigError(
                f"{path}: unknown field 'generator.{key}'."
                f"{did_you_mean(key, list(GENERATOR_FIELDS))}"
            )
        kind = GENERATOR_FIELDS[key]
        ok = isinstance(value, (int, float) if kind is float else kind)
        if not ok or isinstance(value, bool):
            raise ConfigError(
                f"{path}: field 'generator.{key}' must be {kind.__name__}, got {value!r}"
            )
        if kind is str and not value.strip():
            raise ConfigError(f"{path}: field 'generator.{key}' must not be empty")
        if kind is int and value < (8 if key in ("height", "width") else 1):
            raise ConfigError(f"{path}: field 'generator.{key}' is too small: {value}")
    values["generator"] = generator
    for name, entry in values["methods"].items():
        where = f"{path}: field 'methods.{name}'"
        if not isinstance(name, str) or not METHOD_NAME.match(name):
            raise ConfigError(
                f"{where}: a method name is letters, digits and _.+- (it becomes a folder name)"
            )
        if name == ORG:
            raise ConfigError(f"{where}: ORG is the original model; set it as 'generator.model'")
        values["methods"][name] = _validated_method(entry, where)


def _validated_method(entry: Any, where: str) -> dict[str, Any]:
    """One `methods` entry: a pipeline (text) or a mapping of igmu.pipelines.sources'
    ENTRY_FIELDS; paths are text (or lists of text for weights, lora, adapter)."""
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where} must be a pipeline folder (text) or a mapping with 'base' (or 'model') "
            f"and weights to apply ({', '.join(WEIGHT_FIELDS)}), got {type(entry).__name__}"
        )
    for key in entry:
        if key not in ENTRY_FIELDS:
            raise ConfigError(
                f"{where}: unknown field {key!r}.{did_you_mean(str(key), list(ENTRY_FIELDS))}"
            )
    if "base" in entry and "model" in entry:
        raise ConfigError(f"{where}: give 'base' or 'model' (the same thing), not both")
    for key in ("base", "model", "checkpoint", "unet", "text_encoder", "text_encoder_2"):
        value = entry.get(key)
        if key in entry and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}.{key} must be a path or hub id (text), got {value!r}")
    for key in LIST_FIELDS:
        value = entry.get(key)
        if key not in entry:
            continue
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(
            isinstance(v, str) and v.strip() for v in items
        ):
            raise ConfigError(f"{where}.{key} must be a path or a list of paths, got {value!r}")
    scale = entry.get("lora_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"{where}.lora_scale must be a number, got {scale!r}")
    if "lora_scale" in entry and "lora" not in entry:
        raise ConfigError(f"{where}: lora_scale without lora")
    negative = entry.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ConfigError(f"{where}.negative_prompt must be text, got {negative!r}")
    return dict(entry)

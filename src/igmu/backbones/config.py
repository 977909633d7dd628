"""The models file: which network or weights file plays each role (YAML, one field per role)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from igmu.errors import ConfigError
from igmu.registry import did_you_mean

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
    # The MiniWorld's judges (null = the ones shipped with igmu).
    "miniworld": {"judges": None},
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
    # mapping {model: folder, negative_prompt: text}. ORG is `generator.model`; NEGPROMPT is
    # built in (ORG with the task's concept as negative prompt) unless named here.
    "methods": {},
}
FIELDS = tuple(DEFAULTS)
# miniworld = the MiniWorld judges' features (the world's own FID/LPIPS feature extractor).
FID_KINDS = ("inception", "clip", "miniworld")


@dataclass(frozen=True)
class ModelsConfig:
    values: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    source: str = "(built-in defaults)"

    def get(self, name: str) -> Any:
        return self.values[name]


def _absolute(value: Any, base: Path) -> Any:
    """Paths written ./x or ../x in a models file are relative to the file's folder."""
    if isinstance(value, str) and value.startswith(("./", "../")):
        return str((base / value).resolve())
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


def load_models_config(path: str | Path | None) -> ModelsConfig:
    if path is None:
        return ModelsConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--models {path}: file does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a models file must be a mapping of role -> model")
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for key, value in raw.items():
        if key not in DEFAULTS:
            raise ConfigError(f"{path}: unknown field {key!r}.{did_you_mean(key, list(FIELDS))}")
        expected = type(DEFAULTS[key])
        if not isinstance(value, expected):
            raise ConfigError(
                f"{path}: field {key!r} must be {expected.__name__}, got {type(value).__name__}"
            )
        values[key] = _absolute(value, path.parent)
    fid_kind = values["fid"].get("kind")
    if fid_kind not in FID_KINDS:
        raise ConfigError(f"{path}: field 'fid.kind' must be one of {FID_KINDS}, got {fid_kind!r}")
    person_kind = values["person"].get("kind")
    if person_kind not in ("yolo", "hog"):
        raise ConfigError(
            f"{path}: field 'person.kind' must be 'yolo' or 'hog', got {person_kind!r}"
        )
    _validate_generation(values, path)
    return ModelsConfig(values, str(path))


GENERATOR_FIELDS = {"model": str, "steps": int, "guidance": float, "height": int, "width": int}
METHOD_FIELDS = ("model", "negative_prompt")
METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _validate_generation(values: dict[str, Any], path: Path) -> None:
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
        if name == "ORG":
            raise ConfigError(f"{where}: ORG is the original model; set it as 'generator.model'")
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where} must be a pipeline folder (text) or a mapping with 'model' and "
                f"optional 'negative_prompt', got {type(entry).__name__}"
            )
        for key in entry:
            if key not in METHOD_FIELDS:
                raise ConfigError(
                    f"{where}: unknown field {key!r}.{did_you_mean(str(key), list(METHOD_FIELDS))}"
                )
        model = entry.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{where}.model must be a pipeline folder or hub id (text)")
        negative = entry.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise ConfigError(f"{where}.negative_prompt must be text, got {negative!r}")
        values["methods"][name] = dict(entry)

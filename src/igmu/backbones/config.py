"""The models file: which network or weights file plays each role (YAML, one field per role)."""

from __future__ import annotations

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
}
FIELDS = tuple(DEFAULTS)


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
    if fid_kind not in ("inception", "clip"):
        raise ConfigError(
            f"{path}: field 'fid.kind' must be 'inception' or 'clip', got {fid_kind!r}"
        )
    person_kind = values["person"].get("kind")
    if person_kind not in ("yolo", "hog"):
        raise ConfigError(
            f"{path}: field 'person.kind' must be 'yolo' or 'hog', got {person_kind!r}"
        )
    return ModelsConfig(values, str(path))

"""Detector protocol and registry.

A detector turns decoded images into raw, cacheable JSON outputs (``analyse``); ``verdict``
applies the configured threshold and label subset to a raw output. Raw outputs are cached by
image content hash and the detector's model fingerprint, so a threshold change re-scores
without re-running the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from igmu.backbones.config import ModelsConfig
from igmu.core.errors import ConfigError
from igmu.core.registry import Registry, did_you_mean


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    score: float
    details: dict[str, Any]


class Detector(Protocol):
    name: str
    # Identifies the network and weights (not the threshold): keys the raw-output cache.
    model_fingerprint: str

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]: ...

    def verdict(self, raw: dict[str, Any]) -> Verdict: ...

    def describe(self) -> dict[str, Any]: ...


DetectorFactory = Callable[[ModelsConfig, str | None, dict[str, Any]], Detector]
DETECTORS: Registry[DetectorFactory] = Registry(
    "detector", home="igmu.detectors", group="igmu.detectors"
)


def detector_settings(models: ModelsConfig, name: str, allowed: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the models file's ``detectors.<name>`` section, validated."""
    given = models.get("detectors").get(name) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{models.source}: field 'detectors.{name}' must be a mapping")
    settings = dict(allowed)
    for key, value in given.items():
        if key not in allowed:
            raise ConfigError(
                f"{models.source}: unknown field 'detectors.{name}.{key}'."
                f"{did_you_mean(key, list(allowed))}"
            )
        settings[key] = value
    if "threshold" in settings and not isinstance(settings["threshold"], int | float):
        raise ConfigError(f"{models.source}: field 'detectors.{name}.threshold' must be a number")
    return settings


def build_detector(
    spec: str, models: ModelsConfig, overrides: dict[str, Any] | None = None
) -> Detector:
    """Build ``name`` or ``name:variant`` (e.g. ``clip_head:nudity``)."""
    name, _, variant = spec.partition(":")
    factory = DETECTORS.get(name)
    return factory(models, variant or None, overrides or {})

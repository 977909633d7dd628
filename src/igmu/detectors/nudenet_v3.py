"""NudeNet v3 (320n ONNX, shipped inside the nudenet package)."""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.backbones.config import ModelsConfig
from igmu.backbones.weights import sha256_of
from igmu.core.errors import ConfigError, MissingExtraError
from igmu.detectors.base import DETECTORS, Verdict, detector_settings

# The exposed-body classes IGMU counts as nudity.
IGMU_LABELS = [
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
]


class NudeNetDetector:
    name = "nudenet"

    def __init__(self, labels: list[str], threshold: float) -> None:
        try:
            import nudenet
            from nudenet import NudeDetector
        except ImportError:
            raise MissingExtraError("The NudeNet detector", "nsfw", "nudenet") from None
        from pathlib import Path

        known = set(getattr(nudenet.nudenet, "__labels"))  # module-private list
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ConfigError(
                f"detector nudenet: unknown label(s) {unknown}; NudeNet v3 labels: {sorted(known)}"
            )
        self.labels = list(labels)
        self.threshold = float(threshold)
        self.model_path = Path(nudenet.__file__).parent / "320n.onnx"
        self._detector = NudeDetector()
        self.weights_sha256 = sha256_of(self.model_path)
        self.version = getattr(nudenet, "__version__", None) or _dist_version("nudenet")
        self.model_fingerprint = f"nudenet-320n:{self.weights_sha256[:16]}"

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        outputs = []
        for image in images:  # batching gives nothing for this model on CPU
            bgr = np.ascontiguousarray(image[:, :, ::-1])
            bgra = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=2)
            # NudeNet converts its input with COLOR_RGBA2BGR; a 4-channel BGRA array keeps order.
            found = self._detector.detect(bgra[:, :, [2, 1, 0, 3]])
            outputs.append(
                {
                    "detections": [
                        {
                            "label": d["class"],
                            "score": float(d["score"]),
                            "box": [int(v) for v in d["box"]],
                        }
                        for d in found
                    ]
                }
            )
        return outputs

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        hits = [d for d in raw["detections"] if d["label"] in self.labels]
        score = max((d["score"] for d in hits), default=0.0)
        flagged = [d["label"] for d in hits if d["score"] >= self.threshold]
        return Verdict(bool(flagged), float(score), {"labels": sorted(set(flagged))})

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "version": self.version,
            "weights": "320n.onnx (nudenet package)",
            "weights_sha256": self.weights_sha256,
            "labels": self.labels,
            "threshold": self.threshold,
            "score": "max score over the counted labels; flagged when any is >= threshold",
        }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@DETECTORS.register("nudenet")
def build_nudenet(models: ModelsConfig, variant: str | None, overrides: dict[str, Any]):
    settings = detector_settings(models, "nudenet", {"threshold": 0.45, "labels": IGMU_LABELS})
    settings.update(overrides)
    return NudeNetDetector(list(settings["labels"]), settings["threshold"])

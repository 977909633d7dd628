"""Person detectors for subject retention: YOLO (ultralytics) or OpenCV's HOG people detector."""

from __future__ import annotations

from typing import Any

import numpy as np

from igmu.backbones.config import ModelsConfig
from igmu.backbones.weights import load_state_dict, sha256_of
from igmu.detectors.base import DETECTORS, Verdict
from igmu.detectors.nudenet_v3 import _dist_version
from igmu.errors import ConfigError, MissingExtraError, ModelNotFoundError


class HogPersonDetector:
    """Offline fallback: OpenCV's pedestrian HOG+SVM. Weaker than YOLO; recorded as such."""

    name = "person_hog"

    def __init__(self, threshold: float, max_side: int) -> None:
        try:
            import cv2
        except ImportError:
            raise MissingExtraError(
                "The HOG person detector", "nsfw", "opencv-python-headless"
            ) from None
        if not hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
            raise MissingExtraError(
                "The HOG person detector (OpenCV < 5)", "nsfw", "opencv-python-headless<5"
            )
        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.threshold = float(threshold)
        self.max_side = int(max_side)
        self.version = cv2.__version__
        self.model_fingerprint = f"opencv-hog-people:{self.version}:{self.max_side}"

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        cv2 = self._cv2
        outputs = []
        for image in images:
            scale = min(1.0, self.max_side / max(image.shape[:2]))
            small = (
                image
                if scale == 1.0
                else cv2.resize(
                    image,
                    (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                    interpolation=cv2.INTER_AREA,
                )
            )
            boxes, weights = self._hog.detectMultiScale(
                cv2.cvtColor(small, cv2.COLOR_RGB2GRAY),
                winStride=(8, 8),
                padding=(8, 8),
                scale=1.05,
            )
            outputs.append(
                {
                    "boxes": [
                        [round(float(v) / scale) for v in box]
                        for box in np.asarray(boxes).reshape(-1, 4)
                    ],
                    "scores": [float(w) for w in np.asarray(weights).reshape(-1)],
                }
            )
        return outputs

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        score = max(raw["scores"], default=0.0)
        return Verdict(score >= self.threshold, float(score), {"boxes": len(raw["scores"])})

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "kind": "OpenCV HOG people detector (offline fallback, weaker than YOLO)",
            "version": self.version,
            "threshold": self.threshold,
            "max_side": self.max_side,
        }


class YoloPersonDetector:
    """COCO class 0 boxes from an ultralytics YOLO detection model, as IGMU counts persons."""

    name = "person_yolo"

    def __init__(self, arch: str, weights: str, conf: float, iou: float) -> None:
        try:
            import torch
            from ultralytics.nn.tasks import DetectionModel
            from ultralytics.utils.nms import non_max_suppression
        except ImportError:
            raise MissingExtraError("The YOLO person detector", "yolo", "ultralytics") from None
        if not weights:
            raise ModelNotFoundError(
                "person detector yolo: models field 'person.weights' must name a .safetensors "
                "state dict of the YOLO detection model (pickled .pt files are refused)"
            )
        state = load_state_dict(weights, "YOLO person detector (models field 'person.weights')")
        self.model = DetectionModel(arch, verbose=False)
        self.model.load_state_dict(state)
        self.model.eval()
        self._torch = torch
        self._nms = non_max_suppression
        self.conf, self.iou = float(conf), float(iou)
        self.arch = arch
        self.weights_sha256 = sha256_of(weights)
        self.version = _dist_version("ultralytics")
        self.model_fingerprint = f"yolo:{arch}:{self.weights_sha256[:16]}"

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        torch = self._torch
        import torch.nn.functional as F

        outputs = []
        for image in images:
            tensor = (
                torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
            )
            tensor = F.interpolate(tensor, size=(640, 640), mode="bilinear", align_corners=False)
            with torch.inference_mode():
                pred = self.model(tensor)
            boxes = self._nms(pred, self.conf, self.iou, classes=[0])[0]
            outputs.append({"scores": [float(v) for v in boxes[:, 4].tolist()]})
        return outputs

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        score = max(raw["scores"], default=0.0)
        return Verdict(bool(raw["scores"]), float(score), {"boxes": len(raw["scores"])})

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "kind": f"ultralytics {self.arch}, COCO class 0",
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "conf": self.conf,
            "iou": self.iou,
        }


@DETECTORS.register("person")
def build_person(models: ModelsConfig, variant: str | None, overrides: dict[str, Any]):
    config = dict(models.get("person"))
    kind = variant or config.pop("kind", "hog")
    config.pop("kind", None)
    if kind == "hog":
        settings = {"threshold": 0.5, "max_side": 512}
        unknown = set(config) - set(settings)
        if unknown:
            raise ConfigError(
                f"{models.source}: unknown field 'person.{sorted(unknown)[0]}' for hog"
            )
        settings.update(config)
        settings.update(overrides)
        return HogPersonDetector(settings["threshold"], settings["max_side"])
    if kind == "yolo":
        settings = {"arch": "yolov8n.yaml", "weights": None, "conf": 0.5, "iou": 0.6}
        settings.update(config)
        settings.update(overrides)
        return YoloPersonDetector(
            settings["arch"], settings["weights"], settings["conf"], settings["iou"]
        )
    raise ConfigError(f"person detector kind must be 'hog' or 'yolo', got {kind!r}")

"""Person detectors for subject retention: YOLO (ultralytics) or OpenCV's HOG people detector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from igmu.backbones.config import ModelsConfig
from igmu.backbones.weights import load_state_dict, sha256_of
from igmu.core.errors import (
    ConfigError,
    MissingExtraError,
    ModelNotFoundError,
    UnsafeWeightsError,
)
from igmu.detectors.base import DETECTORS, Verdict
from igmu.detectors.nudenet_v3 import _dist_version


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


# ultralytics probes the network when imported (a DNS look-up for its "online" flag, then
# version checks, telemetry and pip auto-installs); none of that may happen here.
_ULTRALYTICS_OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}
_PRINT_FIELDS = ("precision", "threshold", "edgeitems", "linewidth", "sci_mode")


def _import_ultralytics() -> tuple[Any, Any, Any, Any]:
    """DetectionModel, LetterBox, scale_boxes and non_max_suppression, offline and contained.

    Importing ultralytics also patches the process: ``PIL.Image.open`` (an unreadable file then
    triggers a pip install of pi-heif and an ImportError instead of PIL's own error, which the
    image decoder relies on), ``torch.save``, numpy/torch print options and OpenCV's thread
    count. Those are put back: this detector needs none of them.
    """
    import os
    import sys

    import cv2
    import torch
    from PIL import Image

    for key, value in _ULTRALYTICS_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    first = "ultralytics" not in sys.modules
    saved = (
        np.get_printoptions(),
        {k: getattr(torch._tensor_str.PRINT_OPTS, k) for k in _PRINT_FIELDS},
        cv2.getNumThreads(),
    )
    from ultralytics.data.augment import LetterBox
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import patches
    from ultralytics.utils.ops import scale_boxes

    try:  # ultralytics >= 8.3.x moved NMS out of ops
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:
        from ultralytics.utils.ops import non_max_suppression

    if getattr(Image.open, "__module__", "") == patches.__name__:
        Image.open = getattr(patches, "_image_open", Image.open)
    if getattr(torch.save, "__module__", "") == patches.__name__:
        torch.save = getattr(patches, "_torch_save", torch.save)
    if first:
        np.set_printoptions(**saved[0])
        torch.set_printoptions(**saved[1])
        cv2.setNumThreads(saved[2])
    return DetectionModel, LetterBox, scale_boxes, non_max_suppression


class YoloPersonDetector:
    """COCO class 0 boxes from an ultralytics YOLO detection model, as IGMU counts persons.

    Mirrors ``YOLO(weights).predict(image, conf=conf, iou=iou)`` one image at a time: the
    predictor's letterbox (long side to ``imgsz``, aspect kept, grey 114 padding to the smallest
    stride multiple), RGB in [0, 1], fused Conv+BN, and ultralytics' own NMS. Only a
    ``.safetensors`` state dict is loaded, into a ``DetectionModel`` built from an architecture
    YAML shipped with ultralytics (e.g. ``yolov8n.yaml``); pickled ``.pt`` checkpoints are refused.
    """

    name = "person_yolo"
    person_class = 0  # COCO "person"

    def __init__(
        self, arch: str, weights: str | None, conf: float, iou: float, imgsz: int = 640
    ) -> None:
        try:
            import torch

            DetectionModel, LetterBox, scale_boxes, nms = _import_ultralytics()
        except ImportError:
            raise MissingExtraError("The YOLO person detector", "yolo", "ultralytics") from None
        if not isinstance(arch, str) or not arch.endswith((".yaml", ".yml")) or "://" in arch:
            raise ConfigError(
                f"person detector yolo: field 'person.arch' must name an architecture YAML such "
                f"as 'yolov8n.yaml' (shipped with ultralytics) or a local .yaml file, got {arch!r}"
            )
        if not weights:
            raise ModelNotFoundError(
                "person detector yolo: models field 'person.weights' must name a .safetensors "
                "state dict of the YOLO detection model (pickled .pt files are refused)"
            )
        if Path(weights).suffix != ".safetensors":
            raise UnsafeWeightsError(
                f"person detector yolo: {weights} is not a .safetensors file; pickled YOLO "
                "checkpoints (.pt) would run code when loaded and are refused. Convert it once, "
                "on a machine you trust: YOLO('yolov8n.pt').model.float().state_dict() -> "
                "safetensors.torch.save_file(...)"
            )
        for name, value in (("conf", conf), ("iou", iou)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(
                    f"person detector yolo: field 'person.{name}' must be a number in [0, 1], "
                    f"got {value!r}"
                )
        if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
            raise ConfigError(
                f"person detector yolo: field 'person.imgsz' must be a positive multiple of 32, "
                f"got {imgsz!r}"
            )
        state = load_state_dict(weights, "YOLO person detector (models field 'person.weights')")
        try:
            model = DetectionModel(arch, verbose=False)
        except FileNotFoundError as exc:
            raise ModelNotFoundError(
                f"person detector yolo: architecture {arch!r} not found: {exc}"
            ) from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelNotFoundError(
                f"person detector yolo: {weights} does not fit architecture {arch!r}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        self.model = model.float().eval().fuse(verbose=False)  # as ultralytics' AutoBackend
        self.stride = max(int(self.model.stride.max()), 32)
        self._letterbox = LetterBox(imgsz, auto=True, stride=self.stride)
        self._scale_boxes = scale_boxes
        self._nms = nms
        self._torch = torch
        self.conf, self.iou, self.imgsz = float(conf), float(iou), int(imgsz)
        self.arch = arch
        self.weights_sha256 = sha256_of(weights)
        self.version = _dist_version("ultralytics")
        # conf and iou shape the raw boxes (NMS), so they key the cache too.
        self.model_fingerprint = (
            f"yolo:{arch}:{self.weights_sha256[:16]}:{self.imgsz}:{self.conf:g}:{self.iou:g}"
        )

    def _preprocess(self, image: np.ndarray) -> Any:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"YOLO person detector expects RGB images, got shape {image.shape}")
        boxed = self._letterbox(image=np.ascontiguousarray(image))
        tensor = self._torch.from_numpy(np.ascontiguousarray(boxed)).permute(2, 0, 1)[None]
        return tensor.float().div_(255)  # RGB already (the predictor flips its BGR input)

    def analyse(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        torch = self._torch
        outputs = []
        for image in images:
            tensor = self._preprocess(image)
            # NMS inside inference mode too, as the predictor: older versions edit it in place
            with torch.inference_mode():
                pred = self.model(tensor)
                if isinstance(pred, list | tuple):  # eval mode: (decoded boxes, raw head maps)
                    pred = pred[0]
                det = self._nms(pred, self.conf, self.iou, classes=[self.person_class])[0]
                boxes = det[:, :4].clone()
                if len(boxes):
                    boxes = self._scale_boxes(tensor.shape[2:], boxes, image.shape[:2])
            outputs.append(
                {
                    "scores": [round(float(v), 6) for v in det[:, 4].tolist()],
                    "boxes": [[round(float(v), 2) for v in box] for box in boxes.tolist()],
                }
            )
        return outputs

    def verdict(self, raw: dict[str, Any]) -> Verdict:
        scores = [s for s in raw["scores"] if s >= self.conf]
        return Verdict(bool(scores), float(max(scores, default=0.0)), {"boxes": len(scores)})

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "kind": f"ultralytics {self.arch}, COCO class 0",
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "imgsz": self.imgsz,
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
        settings = {"arch": "yolov8n.yaml", "weights": None, "conf": 0.5, "iou": 0.6, "imgsz": 640}
        unknown = set(config) - set(settings)
        if unknown:
            raise ConfigError(
                f"{models.source}: unknown field 'person.{sorted(unknown)[0]}' for yolo"
            )
        settings.update(config)
        overrides = dict(overrides)
        if "threshold" in overrides:  # `igmu detect person --threshold` sets the box confidence
            overrides["conf"] = overrides.pop("threshold")
        settings.update(overrides)
        return YoloPersonDetector(
            settings["arch"],
            settings["weights"],
            settings["conf"],
            settings["iou"],
            settings["imgsz"],
        )
    raise ConfigError(f"person detector kind must be 'hog' or 'yolo', got {kind!r}")

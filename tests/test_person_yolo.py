"""YOLO person detector: safetensors-only loading, and faithfulness to ultralytics' predict().

Runs offline on a yolov8n built from the YAML that ships inside ultralytics, with random weights
crafted so class-0 scores spread over (0, 1): no hub, no pickled checkpoint.
"""

from __future__ import annotations

import io
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from igmu.backbones.config import load_models_config
from igmu.backbones.weights import sha256_of
from igmu.core.errors import ConfigError, ModelNotFoundError, UnsafeWeightsError
from igmu.detectors.base import build_detector
from igmu.detectors.person import YoloPersonDetector, _import_ultralytics

# Import ultralytics the detector's way before anything else does: offline (no DNS probe at
# import), with its process-wide patches (PIL.Image.open, torch.save, ...) undone, so the rest
# of the suite runs as without it. Equivalent to pytest.importorskip("ultralytics") otherwise.
try:
    _import_ultralytics()
except ImportError:
    pytest.importorskip("ultralytics")
    raise


def _crafted_state() -> dict[str, torch.Tensor]:
    """yolov8n with a fixed seed; activations kept alive and class logits spread out.

    At default init the signal fades through the network and every box scores ~1e-4, so
    nothing survives NMS. Smaller BN running variances keep the features alive, a larger
    class conv spreads the logits, and a person bias of -2 puts some boxes above 0.5.
    """
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    state = {
        k: v.detach().clone().contiguous()
        for k, v in DetectionModel("yolov8n.yaml", verbose=False).state_dict().items()
    }
    for key in state:
        if key.endswith("bn.running_var"):
            state[key].fill_(1 / 2.5**2)
    for level in range(3):
        state[f"model.22.cv3.{level}.2.weight"] *= 100
        state[f"model.22.cv3.{level}.2.bias"][0] = -2.0
    return state


@pytest.fixture(scope="module")
def yolo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = tmp_path_factory.mktemp("yolo")
    state = _crafted_state()
    weights = folder / "yolov8n-person.safetensors"
    save_file(state, str(weights))
    models = folder / "models.yaml"
    models.write_text(
        "person:\n"
        "  kind: yolo\n"
        "  arch: yolov8n.yaml\n"
        f"  weights: ./{weights.name}\n"
        "  conf: 0.5\n"
        "  iou: 0.6\n",
        encoding="utf-8",
    )
    return models, weights, state


def _images() -> list[np.ndarray]:
    """A square 512 image (-> 640x640) and a wide one (-> letterboxed 384x640), RGB uint8."""
    rng = np.random.default_rng(0)
    square = np.full((512, 512, 3), 60, np.uint8)
    square[100:400, 180:330] = rng.integers(0, 256, (300, 150, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (290, 500, 3), dtype=np.uint8)
    return [square, wide]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_builds_from_models_file_offline(yolo_files, no_network) -> None:
    models, weights, _ = yolo_files
    detector = build_detector("person", load_models_config(models))
    assert isinstance(detector, YoloPersonDetector)
    sha = sha256_of(weights)
    assert sha[:16] in detector.model_fingerprint
    assert detector.describe()["weights_sha256"] == sha
    assert (detector.conf, detector.iou) == (0.5, 0.6)
    # conf / iou change the raw boxes, so they key the raw-output cache as well
    other = build_detector("person", load_models_config(models), {"threshold": 0.25})
    assert other.conf == 0.25 and other.model_fingerprint != detector.model_fingerprint


def test_analyse_one_result_per_image(yolo_files, no_network) -> None:
    models, _, _ = yolo_files
    detector = build_detector("person", load_models_config(models))
    images = _images()
    raws = detector.analyse(images)
    assert len(raws) == len(images)
    assert any(raw["scores"] for raw in raws), "crafted weights should give some person boxes"
    for raw, image in zip(raws, images, strict=True):
        assert len(raw["boxes"]) == len(raw["scores"])
        assert all(math.isfinite(s) and 0.5 <= s <= 1 for s in raw["scores"])
        height, width = image.shape[:2]
        for x1, y1, x2, y2 in raw["boxes"]:  # original image coordinates
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        verdict = detector.verdict(raw)
        assert verdict.flagged == bool(raw["scores"])
        assert verdict.details["boxes"] == len(raw["scores"])
        assert verdict.score == max(raw["scores"], default=0.0)


def test_letterbox_matches_predictor(yolo_files) -> None:
    models, _, _ = yolo_files
    detector = build_detector("person", load_models_config(models))
    square, wide = _images()
    tensor = detector._preprocess(square)
    assert tuple(tensor.shape) == (1, 3, 640, 640) and tensor.dtype == torch.float32
    assert float(tensor.min()) >= 0 and float(tensor.max()) <= 1
    tensor = detector._preprocess(wide)  # 500x290 -> 640x371, grey-padded to a stride multiple
    assert tuple(tensor.shape) == (1, 3, 384, 640)
    grey = torch.tensor(114 / 255)
    assert torch.allclose(tensor[0, :, :6, :], grey) and torch.allclose(tensor[0, :, -7:, :], grey)
    assert not torch.allclose(tensor[0, :, 6, :], grey)


@pytest.mark.parametrize("conf", [0.001, 0.5])
def test_faithful_to_ultralytics_predict(yolo_files, conf: float) -> None:
    """Same person scores and boxes as YOLO(...).predict on the same in-memory weights."""
    from ultralytics import YOLO

    models, _, state = yolo_files
    detector = build_detector("person", load_models_config(models), {"threshold": conf})
    reference = YOLO("yolov8n.yaml")
    reference.model.load_state_dict(state)
    images = _images()
    ours = detector.analyse(images)
    for image, raw in zip(images, ours, strict=True):
        bgr = np.ascontiguousarray(image[..., ::-1])  # predict() takes OpenCV's BGR arrays
        result = reference.predict(bgr, conf=conf, iou=0.6, classes=[0], verbose=False)[0]
        expected = result.boxes.conf.tolist()
        assert len(raw["scores"]) == len(expected)
        if conf < 0.5:
            assert len(expected) > 10  # a real NMS workload, not an empty comparison
        np.testing.assert_allclose(raw["scores"], expected, atol=1e-3)
        # boxes rank by score: compare those whose rank no float noise can swap
        gaps = np.abs(np.diff(expected, prepend=np.inf, append=-np.inf))
        distinct = np.minimum(gaps[:-1], gaps[1:]) > 1e-4
        assert distinct[: min(5, len(expected))].all()
        np.testing.assert_allclose(
            np.asarray(raw["boxes"]).reshape(-1, 4)[distinct],
            result.boxes.xyxy.numpy()[distinct],
            atol=0.05,
        )


def test_pickled_checkpoints_are_refused(yolo_files, tmp_path: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel

    models, _, state = yolo_files
    full = tmp_path / "yolov8n.pt"  # what ultralytics ships: a pickled model object
    torch.save({"model": DetectionModel("yolov8n.yaml", verbose=False)}, full)
    plain = tmp_path / "state.pt"  # even a tensors-only pickle: the policy is safetensors only
    torch.save(state, plain)
    disguised = tmp_path / "pickle.safetensors"
    disguised.write_bytes(full.read_bytes())
    for path in (full, plain, disguised):
        with pytest.raises(UnsafeWeightsError):
            YoloPersonDetector("yolov8n.yaml", str(path), 0.5, 0.6)
    with pytest.raises(UnsafeWeightsError):
        build_detector("person", load_models_config(models), {"weights": str(full)})


def test_bad_settings(yolo_files, tmp_path: Path) -> None:
    models, weights, _ = yolo_files
    with pytest.raises(ModelNotFoundError):
        YoloPersonDetector("yolov8n.yaml", None, 0.5, 0.6)
    with pytest.raises(ModelNotFoundError):
        YoloPersonDetector("yolov8n.yaml", str(tmp_path / "absent.safetensors"), 0.5, 0.6)
    with pytest.raises(ModelNotFoundError, match="does not fit"):
        YoloPersonDetector("yolov8s.yaml", str(weights), 0.5, 0.6)
    with pytest.raises(ConfigError):
        YoloPersonDetector("https://example.invalid/y.yaml", str(weights), 0.5, 0.6)
    with pytest.raises(ConfigError):
        YoloPersonDetector("yolov8n.yaml", str(weights), 1.5, 0.6)
    typo = tmp_path / "models.yaml"
    typo.write_text(f"person: {{kind: yolo, weights: {weights}, thresh: 0.3}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="person.thresh"):
        build_detector("person", load_models_config(typo))


def test_ultralytics_patches_are_undone(yolo_files) -> None:
    """ultralytics patches PIL.Image.open; a non-image must still raise PIL's own error."""
    from PIL import Image, UnidentifiedImageError

    models, _, _ = yolo_files
    build_detector("person", load_models_config(models))
    assert Image.open.__module__ == "PIL.Image"
    assert torch.save.__module__ == "torch.serialization"
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"not an image at all"))

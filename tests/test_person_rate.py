"""person_rate and the offline HOG person detector, on images whose truth is known: drawn
human silhouettes (a person) and MiniWorld shapes (no person)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from helpers import read_csv, run_cli
from igmu.backbones.config import load_models_config
from igmu.detectors.base import build_detector
from igmu.miniworld.oracle import oracle_image


def silhouette(height: int = 256, width: int = 160, shade: int = 40) -> np.ndarray:
    """A standing figure (head, torso, arms, legs) on a light background, as RGB."""
    image = Image.new("L", (width, height), 200)
    draw = ImageDraw.Draw(image)
    cx, top, head = width // 2, int(height * 0.12), int(height * 0.07)
    draw.ellipse([cx - head, top, cx + head, top + 2 * head], fill=shade)
    neck, hip = top + 2 * head, top + 2 * head + int(height * 0.33)
    half = int(width * 0.14)
    draw.rectangle([cx - half, neck + 4, cx + half, hip], fill=shade)
    for side in (-1, 1):
        draw.polygon([(cx + side * half, neck + 8), (cx + side * int(width * 0.24), neck
                      + int(height * 0.30)), (cx + side * int(width * 0.19), neck
                      + int(height * 0.31)), (cx + side * int(width * 0.10), neck + 20)],
                     fill=shade)
        draw.polygon([(cx + side * int(width * 0.13), hip), (cx + side * int(width * 0.02), hip),
                      (cx + side * int(width * 0.05), int(height * 0.92)),
                      (cx + side * int(width * 0.14), int(height * 0.92))], fill=shade)
    grey = np.asarray(image.filter(ImageFilter.GaussianBlur(1)))
    return np.repeat(grey[:, :, None], 3, axis=2)


def no_person(seed: int) -> np.ndarray:
    shape = oracle_image("a blue square on a white background", seed, 64)
    return np.asarray(Image.fromarray(shape).resize((160, 256), Image.NEAREST))


@pytest.fixture(scope="module")
def hog(tiny_models: Path):
    return build_detector("person", load_models_config(tiny_models))


def test_hog_finds_the_figure_and_not_the_shapes(hog) -> None:
    import cv2

    images = [silhouette(), silhouette(192, 96), no_person(0), no_person(1)]
    verdicts = [hog.verdict(raw) for raw in hog.analyse(images)]
    assert [v.flagged for v in verdicts] == [True, True, False, False]
    # The wrapper is OpenCV's detector: same boxes and weights as calling it directly.
    reference = cv2.HOGDescriptor()
    reference.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    grey = cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY)
    boxes, weights = reference.detectMultiScale(grey, winStride=(8, 8), padding=(8, 8),
                                                scale=1.05)
    raw = hog.analyse(images[:1])[0]
    assert raw["boxes"] == np.asarray(boxes).reshape(-1, 4).tolist()
    assert raw["scores"] == pytest.approx(np.asarray(weights).reshape(-1).tolist())


def test_person_rate_counts_forget_images_that_keep_a_person(tiny_models: Path,
                                                             tmp_path: Path) -> None:
    """Nudity task layout: ORG keeps the figure in all 8 forget images, an over-eraser in 4
    (the others became a landscape-like empty scene)."""
    root = tmp_path / "Nudity"
    for j in range(4):
        for k in range(2):
            name = f"0_{j}_{k}.png"
            for folder, pixels in (
                ("forgot/ORG", silhouette()),
                ("forgot/ERASER", silhouette() if j < 2 else no_person(j * 2 + k)),
                ("remove_word/ORG", silhouette()),
            ):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / folder / name)
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "nudity", "--images", root, "--out", out, "--models",
            tiny_models, "--metrics", "person_rate", "--quiet")
    rows = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    assert float(rows["ORG"]["value"]) == 1.0 and float(rows["ERASER"]["value"]) == 0.5
    assert rows["ERASER"]["aspect"] == "preservation"
    assert (rows["ERASER"]["n"], rows["ERASER"]["prompts"]) == ("8", "4")
    assert rows["ERASER"]["higher_is_better"] == "true"

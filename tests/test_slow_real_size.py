"""Opt-in (-m slow): the engine with networks of the real sizes (random weights): CLIP
ViT-B/32 at 224 px, the FID Inception at 299 px, on 512 px images; CLIP score still equals
torchmetrics' at that size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import read_csv, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_size_models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    from igmu.testing.tiny import make_random_clip_b32, make_random_inception

    folder = tmp_path_factory.mktemp("real")
    make_random_clip_b32(folder / "clip-b32")
    make_random_inception(folder / "inception.safetensors", seed=0)
    models = yaml.safe_load(tiny_models.read_text())
    models.update(clip_detector=str(folder / "clip-b32"), clip_score=str(folder / "clip-b32"),
                  fid={"kind": "inception", "weights": str(folder / "inception.safetensors")})
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(models))
    return path


def test_real_size_networks_on_512px_images(church_demo: Path, real_size_models: Path,
                                            tmp_path: Path) -> None:
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPModel, CLIPProcessor

    for path in church_demo.rglob("*.png"):  # the layout at SD-1.x's size
        Image.open(path).resize((512, 512), Image.BICUBIC).save(path)
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--out", out,
            "--models", real_size_models, "--quiet")
    rows = read_csv(out / "metrics.csv")
    aspects = {r["aspect"] for r in rows}
    assert {"forgetting", "fidelity", "preservation", "alignment"} <= aspects
    assert all(math.isfinite(float(r["value"])) for r in rows if r["value"])
    location = yaml.safe_load(real_size_models.read_text())["clip_score"]

    def load():
        return CLIPModel.from_pretrained(location), CLIPProcessor.from_pretrained(
            location, use_fast=False)

    for row in [r for r in read_csv(out / "samples.csv") if r["metric"] == "clip_score"]:
        image = torch.from_numpy(np.asarray(Image.open(row["path"]).convert("RGB")))
        expected = float(clip_score(image.permute(2, 0, 1), row["prompt"], load))
        assert float(row["value"]) == pytest.approx(expected, rel=1e-4, abs=1e-4)

"""Engine scores equal independent reference computations (lpips package, torchmetrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_attribute_layout, read_csv, run_cli
from igmu.backbones.config import load_models_config
from igmu.tasks import load_task
from igmu.tasks.stripping import concept_words_in


def _models(path: Path) -> dict:
    return load_models_config(path).values


def test_lpips_equals_lpips_package(church_demo: Path, tiny_models: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lpips = pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import load_file

    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--out", out,
            "--models", tiny_models, "--metrics", "lpips", "--quiet")
    samples = read_csv(out / "samples.csv")
    assert len(samples) == 10  # ESD and UCE, 5 Airplane images each

    # Reference: lpips.LPIPS building its own AlexNet through torchvision, with our weights.
    weights = load_file(_models(tiny_models)["lpips"]["backbone_weights"])
    real_alexnet = torchvision.models.alexnet

    def alexnet_with_weights(*args, **kwargs):
        net = real_alexnet(weights=None)
        net.features.load_state_dict({k[len("features."):]: v for k, v in weights.items()})
        return net

    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", alexnet_with_weights)
    reference = lpips.LPIPS(net="alex", verbose=False).eval()
    for row in samples:
        ref_path = json.loads(row["extra"])["reference"]
        a = lpips.im2tensor(np.asarray(Image.open(ref_path).convert("RGB")))
        b = lpips.im2tensor(np.asarray(Image.open(row["path"]).convert("RGB")))
        with torch.no_grad():
            expected = float(reference(a, b))
        assert float(row["value"]) == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_clip_score_equals_torchmetrics(church_demo: Path, tiny_models: Path,
                                        tmp_path: Path) -> None:
    pytest.importorskip("torchmetrics")
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPModel, CLIPProcessor

    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--out", out,
            "--models", tiny_models, "--metrics", "clip_score", "--quiet")
    samples = read_csv(out / "samples.csv")
    assert len(samples) == 15  # ORG, ESD, UCE on 5 unrelated images
    location = _models(tiny_models)["clip_score"]
    assert all(float(row["value"]) > 0 for row in samples), "comparison would be vacuous"

    def load():
        return CLIPModel.from_pretrained(location), CLIPProcessor.from_pretrained(
            location, use_fast=False)

    for row in samples:
        image = torch.from_numpy(np.asarray(Image.open(row["path"]).convert("RGB")))
        expected = float(clip_score(image.permute(2, 0, 1), row["prompt"], load))
        assert float(row["value"]) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_csdr_scores_fully_stripped_text(tiny_models: Path, tmp_path: Path) -> None:
    task = load_task("van_gogh")
    images = make_attribute_layout(tmp_path / "VanGogh", ["ORG", "ESD"], prompts=3, seeds=2)
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "van_gogh", "--images", images, "--out", out,
            "--models", tiny_models, "--metrics", "csdr,clip_score,fid,lpips", "--quiet")
    samples = [s for s in read_csv(out / "samples.csv") if s["metric"] == "csdr"]
    assert len(samples) == 12
    stripped = task.prompt_set("stripped")
    for row in samples:
        extra = json.loads(row["extra"])
        assert concept_words_in(extra["text"], task.concept_words) == []
        assert "gogh" not in extra["text"].lower()
        assert extra["text"] == stripped.text(0, int(row["prompt_index"]))
        ref, own = extra["clip_score_reference"], extra["clip_score"]
        if ref > 0:
            assert float(row["value"]) == pytest.approx(abs(ref - own) / ref * 100, rel=1e-9)
    aspects = {(r["metric"], r["aspect"]) for r in read_csv(out / "metrics.csv")}
    assert ("fid", "fidelity") in aspects and ("lpips", "fidelity") in aspects
    assert ("csdr", "alignment") in aspects


def test_residual_rate_matches_head_on_clip_features(church_demo: Path, tiny_models: Path,
                                                     tmp_path: Path) -> None:
    """Residual = share of forget images the IGMU head puts in the concept class."""
    from igmu.backbones.clip import ClipBackbone
    from igmu.backbones.weights import load_state_dict
    from igmu.detectors.clip_head import build_head

    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--out", out,
            "--models", tiny_models, "--metrics", "residual_rate", "--quiet")
    models = _models(tiny_models)
    backbone = ClipBackbone.from_reference(models["clip_detector"], "test", "clip_detector")
    head = build_head(512)
    head.load_state_dict(load_state_dict(models["heads"]["object_church"], "head"))
    head.eval()
    for row in read_csv(out / "samples.csv"):
        embed = backbone.image_embeddings([np.asarray(Image.open(row["path"]).convert("RGB"))])
        with torch.no_grad():
            p_class1 = float(torch.sigmoid(head(torch.from_numpy(embed).float())))
        church_is_class = 0  # alphabetical: church=0, other=1
        predicted_church = round(p_class1) == church_is_class
        assert float(row["value"]) == float(predicted_church)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """torch-fidelity's FID Inception with random weights: (safetensors for igmu, .pth for
    torchmetrics, which loads it with torch.load)."""
    pytest.importorskip("torch_fidelity")
    from safetensors.torch import load_file

    from igmu.testing.tiny import make_random_inception

    folder = tmp_path_factory.mktemp("inception")
    weights = folder / "inception.safetensors"
    make_random_inception(weights, seed=0)
    pth = folder / "inception.pth"
    torch.save(load_file(str(weights)), pth)
    return weights, pth


def test_fid_equals_torchmetrics(church_demo: Path, tiny_models: Path, tmp_path: Path,
                                 random_inception: tuple[Path, Path]) -> None:
    """The same images through the same Inception: igmu's FID equals torchmetrics'
    FrechetInceptionDistance (its own preprocessing, features and Fréchet formula)."""
    import yaml
    from torchmetrics.image.fid import FrechetInceptionDistance

    weights, pth = random_inception
    models = yaml.safe_load(tiny_models.read_text())
    models["fid"] = {"kind": "inception", "weights": str(weights)}
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump(models))
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--out", out,
            "--models", models_file, "--metrics", "fid", "--quiet")
    ours = {r["method"]: float(r["value"]) for r in read_csv(out / "metrics.csv")}
    assert set(ours) == {"ESD", "UCE"}

    def batch(method: str) -> torch.Tensor:
        folder = church_demo / "unrelated" / method / "Airplane"
        arrays = [np.asarray(Image.open(folder / f"2_0_{k}.png").convert("RGB")) for k in range(5)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    for method in ("ESD", "UCE"):
        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(pth))
        fid.update(batch("ORG"), real=True)
        fid.update(batch(method), real=False)
        expected = float(fid.compute())
        assert ours[method] == pytest.approx(expected, rel=1e-3, abs=1e-4), method
    assert ours["UCE"] == pytest.approx(0.0, abs=1e-6)  # UCE's images are ORG's pixels

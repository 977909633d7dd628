"""Opt-in (-m network): models named by Hugging Face id resolve online and run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import read_csv, run_cli

pytestmark = pytest.mark.network

HUB_CLIP = "hf-internal-testing/tiny-random-CLIPModel"


def test_hub_clip_by_id(church_demo: Path, tiny_models: Path, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    models = yaml.safe_load(tiny_models.read_text())
    models["clip_score"] = HUB_CLIP
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(models))
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "church", "--images", church_demo, "--models", path,
            "--metrics", "clip_score", "--out", out, "--quiet")
    rows = read_csv(out / "metrics.csv")
    assert {r["method"] for r in rows} == {"ORG", "ESD", "UCE"}
    described = (out / "run.json").read_text()
    assert HUB_CLIP in described

"""Opt-in (-m gpu): on a CUDA device, generation and evaluation give what the CPU gives, and
generation and unlearning run in float16/bfloat16.

Needs only torch, transformers, diffusers and igmu's core (no lpips, torch-fidelity, peft or ray),
so it runs where only those are installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import read_csv, run_cli

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.fail("-m gpu runs only where torch sees a CUDA device")


def test_miniworld_generation_on_cuda_matches_cpu(tmp_path: Path) -> None:
    from PIL import Image

    images = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        run_cli("generate", "--task", "mini_object", "--method", "ORG", "--out", out,
                "--prompt-sets", "forget", "--max-prompts-per-class", "4", "--device", device,
                "--quiet")
        rows = read_csv_jsonl(out / "manifest.jsonl")
        images[device] = [np.asarray(Image.open(out / r["path"]), dtype=np.int16) for r in rows]
    for cpu, gpu in zip(images["cpu"], images["cuda"], strict=True):
        assert np.abs(cpu - gpu).max() <= 8  # a few grey levels: GPU kernels, same model


# metrics that need nothing beyond the core install (LPIPS needs the lpips package)
CORE_METRICS = "residual_rate,fid,clip_score,csdr"


def test_evaluation_on_cuda_matches_cpu(church_demo: Path, tiny_models: Path,
                                        tmp_path: Path) -> None:
    values = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device / "run"
        run_cli("evaluate", "--task", "church", "--images", church_demo, "--models",
                tiny_models, "--device", device, "--out", out, "--metrics", CORE_METRICS,
                "--quiet")
        values[device] = {(r["method"], r["metric"]): r["value"] for r in read_csv(out /
                                                                                "metrics.csv")}
    assert values["cpu"].keys() == values["cuda"].keys()
    for key, value in values["cpu"].items():
        if value:
            assert float(values["cuda"][key]) == pytest.approx(float(value), rel=1e-3,
                                                               abs=1e-3), key


def test_half_precision_generation_and_unlearning(tmp_path: Path) -> None:
    """fp16 and bf16 generate (the dtype is in the fingerprint, so in every cache key) and
    unlearn on CUDA, on tiny SD-1.x and SDXL pipelines."""
    import yaml

    from igmu.testing.tiny import make_tiny_sd_pipeline, make_tiny_sdxl_pipeline

    for name, make in (("sd", make_tiny_sd_pipeline), ("sdxl", make_tiny_sdxl_pipeline)):
        make(tokenizer_dir=tmp_path / f"tok_{name}").save_pretrained(tmp_path / name)
        models = tmp_path / f"{name}.yaml"
        models.write_text(yaml.safe_dump({"generator": {
            "model": str(tmp_path / name), "steps": 2, "height": 32, "width": 32}}))
        fingerprints = set()
        for dtype in ("float32", "float16", "bfloat16"):
            out = tmp_path / f"{name}_{dtype}"
            run_cli("generate", "--task", "church", "--method", "ORG", "--out", out,
                    "--models", models, "--prompt-sets", "forget", "--max-prompts-per-class",
                    "2", "--device", "cuda", "--dtype", dtype, "--quiet")
            rows = read_csv_jsonl(out / "manifest.jsonl")
            assert len(rows) == 2
            fingerprints.add(rows[0]["generator"])
        assert len(fingerprints) == 3
        run_cli("unlearn", "--method", "ESD", "--task", "church", "--base", tmp_path / name,
                "--out", tmp_path / f"esd_{name}", "--device", "cuda", "--dtype", "bfloat16",
                "--steps", "2", "--set", "ddim_steps=2", "--set", "latent_size=8", "--quiet")
        run_cli("unlearn", "--method", "UCE", "--task", "church", "--base", tmp_path / name,
                "--out", tmp_path / f"uce_{name}", "--device", "cuda", "--quiet")


def read_csv_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]

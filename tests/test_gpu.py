"""Opt-in (-m gpu): on a CUDA device, generation and evaluation give what the CPU gives."""

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


def test_evaluation_on_cuda_matches_cpu(church_demo: Path, tiny_models: Path,
                                        tmp_path: Path) -> None:
    values = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device / "run"
        run_cli("evaluate", "--task", "church", "--images", church_demo, "--models",
                tiny_models, "--device", device, "--out", out, "--quiet")
        values[device] = {(r["method"], r["metric"]): r["value"] for r in read_csv(out /
                                                                                "metrics.csv")}
    assert values["cpu"].keys() == values["cuda"].keys()
    for key, value in values["cpu"].items():
        if value:
            assert float(values["cuda"][key]) == pytest.approx(float(value), rel=1e-3,
                                                               abs=1e-3), key


def read_csv_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]

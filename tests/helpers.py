"""Small helpers shared by tests: run the CLI as a user would, read CSVs, make image sets."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run_cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "igmu.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"igmu {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def noise_image(path: Path, seed: int, size: int = 64, smooth: bool = False) -> None:
    """A random RGB image: content-free, deterministic; smooth = upsampled low-frequency noise,
    which compresses like a generated picture."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if smooth:
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((size, size), Image.BICUBIC).save(path)
        return
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def make_attribute_layout(root: Path, methods: list[str], prompts: int = 3, seeds: int = 2) -> Path:
    """IGMU layout for an attribute task: forgot/<M>/0_j_k.png and remove_word/ORG/0_j_k.png."""
    seed = 0
    for method in methods:
        for j in range(prompts):
            for k in range(seeds):
                noise_image(root / "forgot" / method / f"0_{j}_{k}.png", seed)
                seed += 1
    for j in range(prompts):
        for k in range(seeds):
            noise_image(root / "remove_word" / "ORG" / f"0_{j}_{k}.png", 10_000 + seed)
            seed += 1
    return root


def tiny_family_pipeline(family: str, tmp_path_factory) -> object:
    """A tiny random SD-1.x (``sd``) or SDXL (``sdxl``) pipeline, progress bars off."""
    from igmu.testing.tiny import make_tiny_sd_pipeline, make_tiny_sdxl_pipeline

    make = make_tiny_sd_pipeline if family == "sd" else make_tiny_sdxl_pipeline
    pipeline = make(tokenizer_dir=tmp_path_factory.mktemp(f"tok_{family}"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline

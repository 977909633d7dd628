"""Shared fixtures: tiny random models (built once per session) and the shared demo data."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_IGMU = SHARED / "data" / "igmu"


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module of tiny-model tests: on a busy 2-core machine, two OpenMP
    threads fighting other processes are many times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_igmu() -> Path:
    if not SHARED_IGMU.is_dir():
        pytest.skip(f"shared IGMU data not present at {SHARED_IGMU} (developer machines only)")
    return SHARED_IGMU


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models.yaml for tiny random models; official IGMU heads when the shared data exists."""
    from igmu.backbones.tiny import make_tiny

    heads = SHARED_IGMU / "heads" if (SHARED_IGMU / "heads").is_dir() else None
    return make_tiny(tmp_path_factory.mktemp("tiny"), heads)


@pytest.fixture(scope="session")
def tiny_models_random_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from igmu.backbones.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_random"), None)


def copy_scrambled(source: Path, target: Path, seed: int = 0) -> Path:
    """Copy a folder tree writing files in a shuffled order (directory order != name order)."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    random.Random(seed).shuffle(files)
    for path in files:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    return target


@pytest.fixture
def church_demo(shared_igmu: Path, tmp_path: Path) -> Path:
    return copy_scrambled(shared_igmu / "benchmark_demo" / "Church", tmp_path / "Church")

"""Shared fixtures: tiny random models (built once per session), an IGMU-layout image set made
from the MiniWorld (what core tests use), and IGMU's own demo data (extras, when ../shared
exists)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# igmu's file-hash cache goes to a folder of this test session, not the user's home.
os.environ.setdefault("IGMU_CACHE_DIR", tempfile.mkdtemp(prefix="igmu-test-cache-"))
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
    from igmu.testing.tiny import make_tiny

    heads = SHARED_IGMU / "heads" if (SHARED_IGMU / "heads").is_dir() else None
    return make_tiny(tmp_path_factory.mktemp("tiny"), heads)


@pytest.fixture(scope="session")
def tiny_models_random_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from igmu.testing.tiny import make_tiny

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


# The official demo's file names (task church: class 0 of forgot.json, class 2 "Airplane" of
# retain.json), filled with MiniWorld renderer images of known content: ESD draws the cross's
# prompt without the cross, UCE draws another subject; on the unrelated prompts UCE is ORG
# pixel for pixel and ESD another seed.
LAYOUT_METHODS = ("ORG", "ESD", "UCE")
LAYOUT_SEEDS = 5


def render_church_layout(root: Path, size: int = 64) -> Path:
    from PIL import Image

    from igmu.miniworld.oracle import oracle_image

    def save(path: Path, pixels) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    forget, unrelated = "a red cross on a white background", "a green square on a black background"
    for k in range(LAYOUT_SEEDS):
        save(root / "forgot" / "ORG" / f"0_0_{k}.png", oracle_image(forget, k, size))
        save(root / "forgot" / "ESD" / f"0_0_{k}.png",
             oracle_image(forget, k, size, without="shape=cross"))
        save(root / "forgot" / "UCE" / f"0_0_{k}.png",
             oracle_image("a blue circle on a grey background", k, size))
        for method, seed in (("ORG", k), ("UCE", k), ("ESD", k + 10)):
            save(root / "unrelated" / method / "Airplane" / f"2_0_{k}.png",
                 oracle_image(unrelated, seed, size))
    return root


@pytest.fixture(scope="session")
def church_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_church_layout(tmp_path_factory.mktemp("layout") / "Church")


@pytest.fixture
def church_demo(church_layout: Path, tmp_path: Path) -> Path:
    """A private copy of the MiniWorld-made church layout, written in scrambled order."""
    return copy_scrambled(church_layout, tmp_path / "Church")


@pytest.fixture
def shared_church_demo(shared_igmu: Path, tmp_path: Path) -> Path:
    """IGMU's own demo images (real SD-1.4 outputs): extra tests only."""
    return copy_scrambled(shared_igmu / "benchmark_demo" / "Church", tmp_path / "Church")

"""`igmu generate --backend ray` on a local 2-worker CPU cluster: byte-identical to a local run,
and a worker killed (SIGKILL) mid-run costs a retry, never an image or a duplicate."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("diffusers")
ray = pytest.importorskip("ray")

from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.generation import GenerateOptions, generate, read_rows  # noqa: E402
from igmu.generation.engine import DefaultFactory  # noqa: E402
from igmu.tasks import load_task  # noqa: E402
from test_generation import RUN_ARGS, sd_models, tree  # noqa: E402, F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _Dying:
    """A generator that SIGKILLs its own process on its second batch, once per marker file."""

    def __init__(self, generator: Any, marker: str) -> None:
        self.generator, self.marker, self.calls = generator, marker, 0

    @property
    def fingerprint(self) -> str:
        return self.generator.fingerprint

    @property
    def batch_invariant(self) -> bool:
        return self.generator.batch_invariant

    def generate(self, prompts, seeds, settings):
        self.calls += 1
        if self.calls == 2:
            try:  # exactly one worker of the cluster wins the marker and dies
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.generator.generate(prompts, seeds, settings)


@dataclass(frozen=True)
class DyingFactory:
    inner: DefaultFactory
    marker: str

    def __call__(self, source, field):
        return _Dying(self.inner(source, field), self.marker)


def test_two_workers_byte_identical_and_survive_a_killed_worker(
    sd_models: Path, tmp_path: Path, capfd: pytest.CaptureFixture  # noqa: F811
) -> None:
    # the test module's classes travel to the workers by value (tests/ is not importable there)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task, models = load_task("church"), load_model_file(sd_models)
    base = {**RUN_ARGS, "progress": False, "batch_size": 3}
    local = generate(task, tmp_path / "local", models, GenerateOptions(**base))
    assert local.generated == 14

    marker = tmp_path / "killed-once"
    options = GenerateOptions(**base, backend="ray", workers=2, worker_threads=1)
    factory = DyingFactory(DefaultFactory("cpu", 3), str(marker))
    remote = generate(task, tmp_path / "ray", models, options, factory=factory)
    assert marker.exists(), "a worker must have been killed"
    assert "a Ray worker died" in capfd.readouterr().err
    assert remote.generated == 14
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")  # images and manifest, bytes
    rows = read_rows(tmp_path / "ray" / "manifest.jsonl")
    assert len({r["key"] for r in rows}) == len(rows) == 14
    assert len(list((tmp_path / "ray" / "images").rglob("*.png"))) == 14
    assert not ray.is_initialized()  # the local cluster was shut down


def load_model_file(path: Path):
    return load_models_config(path)

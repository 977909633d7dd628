"""The computing part of an evaluation: build the metrics (and the networks they need),
score every image once per network (cached in the store), compute the metrics, store the run.

`igmu.evaluation.engine.evaluate` calls `score` only when the store cannot answer the request.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import igmu
from igmu.backbones.config import ModelsConfig
from igmu.core.errors import ConfigError
from igmu.core.records import Aggregate, ImageRecord, MetricResult, Sample
from igmu.core.threads import chosen_threads
from igmu.core.timings import Timings
from igmu.detectors.base import DETECTORS
from igmu.evaluation.efficiency import efficiency
from igmu.evaluation.executor import Executor, text_key
from igmu.evaluation.exports import write_exports
from igmu.evaluation.pairing import PairedSet
from igmu.evaluation.providers import Providers
from igmu.evaluation.verdict import report_comparisons
from igmu.metrics.base import METRICS, provider_key
from igmu.store import Store
from igmu.store.audits import find_audits
from igmu.store.runs import StoredRun
from igmu.tasks.model import Task


class _Context:
    def __init__(
        self, task: Task, paired: PairedSet, executor: Executor, resamples: int, seed: int
    ):
        self.task, self.paired, self.resamples, self.seed = task, paired, resamples, seed
        self._x = executor
        self.store_path = executor.store.path  # the workspace store (audits, caches)

    def sha(self, record: ImageRecord) -> str:
        return self._x.sha[record.path]

    def embedding(self, provider: Any, record: ImageRecord) -> np.ndarray:
        return self._x.embeddings[(provider_key(provider), self.sha(record))]

    def text_embedding(self, provider: Any, text: str) -> np.ndarray:
        return self._x.embeddings[(provider_key(provider), text_key(text))]

    def verdict(self, detector: Any, record: ImageRecord) -> Any:
        return detector.verdict(self._x.raw[(provider_key(detector), self.sha(record))])

    def pair_value(self, provider: Any, reference: ImageRecord, record: ImageRecord) -> float:
        return self._x.pairs[(provider_key(provider), self.sha(reference), self.sha(record))]

    def audits(self, fingerprint: str) -> list[dict[str, Any]]:
        """The judge audits of a detector fingerprint in the workspace store, newest first."""
        return find_audits(self.store_path, fingerprint)

    def remember_features(self, provider: Any, vectors: dict[str, np.ndarray]) -> None:
        """Keep features of images that are not files (a world's true images) in the store."""
        self._x.store.put_features(provider_key(provider), vectors)


def select_metrics(task: Task, requested: list[str] | None) -> list[str]:
    names = list(requested) if requested else list(task.guidance["metrics"])
    for name in names:
        METRICS.get(name)  # unknown names fail here, with "did you mean"
    return names


class _WouldBuild(Exception):
    """A metric factory asked for a network: it applies as far as the data can tell."""


class _NoNetworks:
    """Stands in for `Providers` while each asked-for metric is checked: every network request
    stops the factory (it applies) before anything is built or loaded."""

    def __init__(self, real: Providers) -> None:
        self.detector_names = real.detector_names

    def __getattr__(self, name: str) -> Any:
        def request(*args: Any, **kwargs: Any) -> Any:
            raise _WouldBuild(name)

        return request


def refuse_inapplicable(task: Task, names: list[str], paired: PairedSet, real: Providers) -> None:
    """Before any network is built: a metric asked for by name that does not apply to this task
    and these images is a ConfigError naming what it needs. (A metric whose applicability
    depends on a network, such as prompt_accuracy's judges, is decided when it is built.)"""
    dry = _NoNetworks(real)
    for name in names:
        factory = METRICS.get(name)
        try:
            built = factory(task, dry, paired)
        except _WouldBuild:
            continue
        if not built:
            needs = getattr(factory, "requires", "inputs it can score")
            raise ConfigError(
                f"--metrics {name}: does not apply to task {task.name!r} with these images; "
                f"it needs {needs}"
            )


def build_metrics(
    task: Task, providers: Providers, paired: PairedSet, options: Any
) -> tuple[list[str], list[Any], list[dict[str, str]]]:
    """(metric names, metric instances, what the task's defaults could not compute and why);
    building them builds the networks they need, after every metric asked for by name was
    checked to apply (`refuse_inapplicable`)."""
    metric_names = select_metrics(task, options.metrics)
    for spec in providers.detector_names:  # an unknown name, with did-you-mean, before any build
        DETECTORS.get(spec.partition(":")[0])
    if options.metrics is not None:
        refuse_inapplicable(task, metric_names, paired, providers)
    metrics, not_computed = [], []
    for name in metric_names:
        built = METRICS.get(name)(task, providers, paired)
        if not built:
            needs = getattr(METRICS.get(name), "requires", "inputs it can score")
            if options.metrics is not None:  # asked for by name: never an absent row
                raise ConfigError(
                    f"--metrics {name}: does not apply to task {task.name!r} with these images; "
                    f"it needs {needs}"
                )
            not_computed.append({"metric": name, "needs": needs})
        metrics.extend(built)
    return metric_names, metrics, not_computed


def run_spec(
    task: Task, options: Any, models: ModelsConfig, providers: Providers,
    metric_names: list[str], resamples: int, images: list[list[str]],
) -> dict[str, Any]:
    """Everything the results depend on; its hash is the run id."""
    return {
        "igmu_version": igmu.__version__,
        "task": {
            "name": task.name,
            "version": task.version,
            "node": task.node,
            "source_sha256": _task_hash(task),
            "sensitive_content": task.is_sensitive,
            "headlines": task.guidance.get("headlines", {}),
        },
        "layout": options.layout,
        "reference_method": options.reference_method,
        "allow_missing": options.allow_missing,
        "device": options.device,
        "metrics": metric_names,
        "detectors": providers.detector_names,
        "bootstrap": {"resamples": resamples, "seed": options.bootstrap_seed, "confidence": 0.95},
        "models_file": models.source,
        "evaluator_fingerprints": sorted({provider_key(p) for p in providers._built.values()}),
        "detector_settings": {
            k: v.describe()
            for k, v in providers._built.items()
            if k.startswith(("detector:", "person"))
        },
        "images": images,
    }


def score(
    task: Task, paired: PairedSet, run_dir: Path, models: ModelsConfig, options: Any,
    store: Store, timings: Timings, packages: dict[str, str], odd_sizes: list[str] | None = None,
) -> tuple[str, list[Aggregate], int, dict[str, Any]]:
    """(run id, aggregates, images decoded, run.json's extra fields) of a computed run;
    ``odd_sizes``: the images of odd size scored under --allow-odd-sizes (run.json lists them)."""
    check_device(options.device)
    providers = Providers(models, task, options.detectors, options.device)
    with timings.stage("build models"):
        metric_names, metrics, not_computed = build_metrics(task, providers, paired, options)
    resamples = int(task.guidance.get("bootstrap_resamples", 1000))
    executor = Executor(
        store, options.batch_size, options.progress, skip_unreadable=options.allow_missing
    )
    with timings.stage("score"):
        needs = [need for metric in metrics for need in metric.needs(paired)]
        executor.run(needs, paired.all_records())
    timings.seconds.update(executor.timings.rounded())
    paired.drop(executor.unreadable)
    all_records = paired.all_records()
    ctx = _Context(task, paired, executor, resamples, options.bootstrap_seed)
    results: list[MetricResult] = []
    notes: list[str] = []
    audits: dict[str, Any] = {}
    with timings.stage("statistics"):
        for metric in metrics:
            results.extend(metric.compute(ctx))
            notes += getattr(metric, "notes", [])  # why a metric gave no row for a method
            if getattr(metric, "audit", None):
                audits[metric.name] = metric.audit
    fingerprints = {
        "evaluators": providers.describe(),
        "packages": packages,
        "platform": {"system": platform.platform(), "python": sys.version.split()[0]},
    }
    images_list = sorted([r.method, str(r.key), executor.sha[r.path]] for r in all_records)
    spec = run_spec(task, options, models, providers, metric_names, resamples, images_list)
    cost, cards = efficiency(sorted({r.method for r in all_records}), models)
    if cards:  # a card's cost is part of what the run reports
        spec["method_cards"] = cards
        fingerprints["method_cards"] = cards
    run_id = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    run_dir.mkdir(parents=True, exist_ok=True)
    aggregates = [r.aggregate for r in results] + cost
    samples = _stored_samples(results, executor)
    with timings.stage("comparisons"):
        run = StoredRun(run_dir, run_id, task.name, spec, fingerprints, {}, paired.left_out,
                        aggregates, samples, store.path)
        comparisons = report_comparisons(run, store)
    with timings.stage("write"):
        store.write_run(
            run_id, task.name, task.version, str(run_dir.resolve()), spec, fingerprints,
            paired.left_out, samples, aggregates, comparisons,
        )
        extra = {"not_computed": not_computed, "metric_notes": notes, "audits": audits,
                 "timings": timings.rounded(), "threads": chosen_threads()}
        if odd_sizes:
            extra["odd_sizes_scored"] = odd_sizes
        write_exports(run_dir, task, run_id, store, spec, fingerprints, paired.left_out, extra)
    return run_id, aggregates, executor.decoded_images, extra


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}")


def _task_hash(task: Task) -> str:
    payload = {name: ps.classes for name, ps in sorted(task.prompt_sets.items())}
    payload["guidance"] = task.guidance  # type: ignore[assignment]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _stored_samples(results: list[MetricResult], executor: Executor) -> list[Sample]:
    return [
        replace(
            s,
            metric=r.aggregate.metric,
            aspect=r.aggregate.aspect,
            sha256=executor.sha[s.record.path],
        )
        for r in results
        for s in r.samples
    ]

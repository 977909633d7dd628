"""Generate a task's prompt sets for some methods into a content-addressed cache + manifest.

Resumable by construction: an image is a file named by its cache key, written atomically, and
never regenerated once present; the manifest is rebuilt from the keys at the end of every run.
Kill a run at any moment and rerun it: nothing is lost, duplicated or different.

Batched by default: a method's jobs, in key order (prompt set, class, prompt, seed), are cut into
fixed batches of ``batch_size`` images, each one pipeline call; every image's cache key names the
members of its batch (pixels depend on the batch's shape), so a rerun composes the same batches
and gets the same bytes. ``per_image`` runs each image alone (slower; keys without batches). The
batches run here (``backend="local"``) or on Ray workers (`igmu.generation.ray_backend`), into
the same cache.
"""

from __future__ import annotations

import gc
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from igmu.backbones.config import ModelsConfig
from igmu.core.errors import ConfigError
from igmu.generation.base import GenerationSettings, Generator
from igmu.generation.cache import ImageCache, cache_key
from igmu.generation.manifest import MANIFEST_NAME, mixed_generators, update_manifest
from igmu.generation.plan import (
    ImageJob,
    MethodSpec,
    SettingOverrides,
    base_settings,
    canonical_methods,
    method_prompt_sets,
    plan_jobs,
    resolve_method,
)
from igmu.pipelines.load import torch_dtype
from igmu.pipelines.sources import PipelineSource
from igmu.tasks.model import Task

# (what to load: a PipelineSource, models-file field) -> a Generator
GeneratorFactory = Callable[[PipelineSource, str], Generator]
BACKENDS = ("local", "ray")
DEFAULT_BATCH_SIZE = 8


@dataclass
class GenerateOptions:
    methods: list[str]
    images_per_prompt: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE
    prompt_sets: list[str] | None = None
    max_prompts_per_class: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    overrides: SettingOverrides = field(default_factory=SettingOverrides)
    # Each batch is one pipeline call (the default; pixels then depend slightly on the batch,
    # whose members join every image's cache key). False = per-image: each image runs alone.
    pipeline_batching: bool = True
    progress: bool = True
    backend: str = "local"
    ray_address: str | None = None  # None: start a local Ray cluster
    workers: int | None = None  # Ray workers (None: one per GPU, or per CPU)
    worker_threads: int = 1  # torch threads of each CPU Ray worker


@dataclass
class GenerationResult:
    manifest: Path
    rows: list[dict[str, Any]]  # this run's rows, in job order
    generated: int
    cached: int
    warnings: list[str]


def _check_options(options: GenerateOptions) -> None:
    for name in ("images_per_prompt", "batch_size"):
        value = getattr(options, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    k = options.max_prompts_per_class
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ConfigError(f"--max-prompts-per-class must be a positive integer, got {k}")
    if options.backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got "
                          f"{options.backend!r}")
    torch_dtype(options.dtype)  # an unknown --dtype fails before any model loads


@dataclass(frozen=True)
class DefaultFactory:
    """Loads a method's pipeline as `DiffusersGenerator` (picklable: Ray workers use it too)."""

    device: str
    pipeline_batch: int
    dtype: str = "float32"

    def __call__(self, source: PipelineSource, field_name: str) -> Generator:
        from igmu.generation.diffusers_backend import DiffusersGenerator

        return DiffusersGenerator.load(source, field_name, self.device, self.pipeline_batch,
                                       self.dtype)


def default_factory(options: GenerateOptions) -> GeneratorFactory:
    pipeline_batch = options.batch_size if options.pipeline_batching else 1
    return DefaultFactory(options.device, pipeline_batch, options.dtype)


def _row(
    job: ImageJob,
    key: str,
    sha256: str,
    cache: ImageCache,
    generator: Generator,
    spec: MethodSpec,
) -> dict[str, Any]:
    return {
        "method": job.method,
        "prompt_set": job.prompt_set,
        "class_name": job.class_name,
        "class_index": job.class_index,
        "prompt_index": job.prompt_index,
        "seed": job.seed,
        "prompt": job.prompt,
        "path": cache.relpath(key),
        "sha256": sha256,
        "key": key,
        "generator": generator.fingerprint,
        "model": spec.model,
        "settings": spec.settings.as_dict(),
    }


def batch_plan(jobs: list[ImageJob], batch_size: int, fingerprint: str,
               settings: GenerationSettings, invariant: bool) -> tuple[list[list[int]], list[str]]:
    """(batches as job indices, cache key per job). Batches are fixed slices of the job list in
    key order, so a rerun groups images as the first run did; unless the generator is
    batch-invariant, each image's key names every member of its batch."""
    batches = [list(range(i, min(i + batch_size, len(jobs))))
               for i in range(0, len(jobs), batch_size)]
    keys = []
    for batch in batches:
        members = None if invariant else [(jobs[i].prompt, jobs[i].seed) for i in batch]
        keys += [cache_key(fingerprint, jobs[i].prompt, jobs[i].seed, settings, members)
                 for i in batch]
    return batches, keys


def _writer_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def run_batches_locally(generator: Generator, jobs: list[ImageJob], batches: list[list[int]],
                        keys: list[str], settings: GenerationSettings, cache: ImageCache,
                        on_done: Callable[[int, int], None]) -> dict[int, str]:
    """Generate the batches with a missing image, here; returns {job index: PNG sha256} of the
    images written. A batch-invariant generator is asked only for the missing images; any other
    for the whole batch again (its pixels depend on the batch).

    PNG encoding and the atomic writes run on a few threads while the next batch generates
    (zlib releases the GIL), at most two batches behind; every write is still one file per
    key, so an interrupted run leaves whole images only."""
    from concurrent.futures import Future, ThreadPoolExecutor

    invariant = bool(getattr(generator, "batch_invariant", False))
    written: dict[int, Future] = {}
    behind: deque[list[Future]] = deque()
    with ThreadPoolExecutor(_writer_threads(), thread_name_prefix="igmu-png") as pool:
        for batch in batches:
            missing = [i for i in batch if not cache.has(keys[i])]
            if missing:
                todo = missing if invariant else batch
                images = generator.generate(
                    [jobs[i].prompt for i in todo], [jobs[i].seed for i in todo], settings
                )
                if len(images) != len(todo):
                    raise RuntimeError(f"the generator returned {len(images)} images for "
                                       f"{len(todo)} prompts")
                futures = []
                for i, image in zip(todo, images, strict=True):
                    if i in missing:
                        written[i] = pool.submit(cache.put, keys[i], image)
                        futures.append(written[i])
                behind.append(futures)
                while len(behind) > 2:  # bound the images held in memory
                    for future in behind.popleft():
                        future.result()
            on_done(len(batch), len(missing))
        return {i: future.result() for i, future in written.items()}


def _run_method(
    spec: MethodSpec,
    jobs: list[ImageJob],
    generator: Generator,
    cache: ImageCache,
    batch_size: int,
    progress: bool,
    runner: Any = None,
) -> tuple[list[dict[str, Any]], int]:
    settings: GenerationSettings = spec.settings
    invariant = bool(getattr(generator, "batch_invariant", False))
    batches, keys = batch_plan(jobs, batch_size, generator.fingerprint, settings, invariant)
    counts = {"done": 0, "new": 0}
    bar = tqdm(total=len(jobs), desc=f"generate {spec.name}", unit="img", disable=not progress)

    def on_done(size: int, new: int) -> None:
        counts["done"] += size
        counts["new"] += new
        bar.update(size)
        bar.set_postfix(new=counts["new"], cached=counts["done"] - counts["new"], refresh=False)

    try:
        if runner is None:
            shas = run_batches_locally(generator, jobs, batches, keys, settings, cache, on_done)
        else:
            shas = runner.run(jobs, batches, keys, settings, cache, on_done)
    finally:
        bar.close()
    rows = []
    for i, job in enumerate(jobs):
        sha = shas.get(i) or cache.sha256(keys[i])
        rows.append(_row(job, keys[i], sha, cache, generator, spec))
    return rows, len(shas)


def generate(
    task: Task,
    out: Path,
    models: ModelsConfig,
    options: GenerateOptions,
    factory: GeneratorFactory | None = None,
) -> GenerationResult:
    """Generate every (method, prompt set, class, prompt, seed) image of ``task`` into ``out``."""
    _check_options(options)
    methods = canonical_methods(options.methods, models)
    settings = base_settings(models, options.overrides)
    specs = [resolve_method(name, task, models, settings) for name in methods]
    plans = []
    for spec in specs:
        sets = method_prompt_sets(task, spec.name, options.prompt_sets)
        if not sets:
            raise ConfigError(
                f"method {spec.name}: no prompt set to generate (only the reference method ORG "
                "is generated on 'stripped')"
            )
        jobs = plan_jobs(
            task, spec.name, sets, options.images_per_prompt, options.max_prompts_per_class
        )
        plans.append((spec, jobs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(out)
    cache.remove_stale_tmp()
    factory = factory or default_factory(options)

    rows: list[dict[str, Any]] = []
    generated = total = 0
    # Load each model once, in first-use order (NEGPROMPT shares ORG's pipeline).
    sources = list(dict.fromkeys(spec.pipeline_source for spec, _ in plans))
    for source in sources:
        group = [(spec, jobs) for spec, jobs in plans if spec.pipeline_source == source]
        if options.progress:
            print(f"loading {source.describe()} for {', '.join(s.name for s, _ in group)}",
                  file=sys.stderr)
        if options.backend == "ray":
            from igmu.generation.ray_backend import RayRunner

            runner: Any = RayRunner(factory, source, group[0][0].field, options)
            generator: Generator = runner.generator
        else:
            runner, generator = None, factory(source, group[0][0].field)
        try:
            for spec, jobs in group:
                method_rows, method_generated = _run_method(
                    spec, jobs, generator, cache, options.batch_size, options.progress, runner
                )
                rows += method_rows
                generated += method_generated
                total += len(jobs)
        finally:
            if runner is not None:
                runner.close()
        del generator, runner
        gc.collect()

    merged = update_manifest(out, rows)
    warnings = [
        f"manifest rows of method {m} come from more than one model or settings "
        "(an earlier run with other settings?); evaluate compares them as one model"
        for m in mixed_generators(merged)
        if m in methods
    ]
    return GenerationResult(out / MANIFEST_NAME, rows, generated, total - generated, warnings)

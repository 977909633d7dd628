"""Generate a task's prompt sets for some methods into a content-addressed cache + manifest.

Resumable by construction: an image is a file named by its cache key, written atomically, and
never regenerated once present; the manifest is rebuilt from the keys at the end of every run.
Kill a run at any moment and rerun it: nothing is lost, duplicated or different.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from igmu.backbones.config import ModelsConfig
from igmu.errors import ConfigError
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
from igmu.tasks.model import Task

# (model reference, models-file field) -> a Generator
GeneratorFactory = Callable[[str, str], Generator]


@dataclass
class GenerateOptions:
    methods: list[str]
    images_per_prompt: int = 1
    batch_size: int = 4
    prompt_sets: list[str] | None = None
    max_prompts_per_class: int | None = None
    device: str = "cpu"
    overrides: SettingOverrides = field(default_factory=SettingOverrides)
    # Run each batch as one pipeline call (faster on GPUs; pixels then depend slightly on the
    # batch size, which joins the cache key). Off: every image runs on its own.
    pipeline_batching: bool = False
    progress: bool = True


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


def default_factory(options: GenerateOptions) -> GeneratorFactory:
    from igmu.generation.diffusers_backend import DiffusersGenerator

    pipeline_batch = options.batch_size if options.pipeline_batching else 1

    def load(model: str, field_name: str) -> Generator:
        return DiffusersGenerator.load(model, field_name, options.device, pipeline_batch)

    return load


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


def _run_method(
    spec: MethodSpec,
    jobs: list[ImageJob],
    generator: Generator,
    cache: ImageCache,
    batch_size: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], int]:
    settings: GenerationSettings = spec.settings
    fingerprint = generator.fingerprint
    # Batches are fixed over the whole job list, so a rerun groups images as the first run did;
    # a generator that is not batch-invariant gets an interrupted batch again in full, and its
    # images' keys name every member of their batch (the pixels depend on them).
    invariant = bool(getattr(generator, "batch_invariant", False))
    keys = []
    for start in range(0, len(jobs), batch_size):
        members = jobs[start : start + batch_size]
        batch = None if invariant else [(job.prompt, job.seed) for job in members]
        keys += [cache_key(fingerprint, job.prompt, job.seed, settings, batch) for job in members]
    shas: dict[int, str] = {}
    generated = 0
    bar = tqdm(total=len(jobs), desc=f"generate {spec.name}", unit="img", disable=not progress)
    try:
        for start in range(0, len(jobs), batch_size):
            batch = list(range(start, min(start + batch_size, len(jobs))))
            missing = [i for i in batch if not cache.has(keys[i])]
            if missing:
                todo = missing if invariant else batch
                images = generator.generate(
                    [jobs[i].prompt for i in todo], [jobs[i].seed for i in todo], settings
                )
                if len(images) != len(todo):
                    raise RuntimeError(
                        f"generator for {spec.name} returned {len(images)} images for "
                        f"{len(todo)} prompts"
                    )
                for i, image in zip(todo, images, strict=True):
                    if i in missing:
                        shas[i] = cache.put(keys[i], image)
                generated += len(missing)
            bar.update(len(batch))
            bar.set_postfix(new=generated, cached=start + len(batch) - generated, refresh=False)
    finally:
        bar.close()
    rows = []
    for i, job in enumerate(jobs):
        sha = shas.get(i) or cache.sha256(keys[i])
        rows.append(_row(job, keys[i], sha, cache, generator, spec))
    return rows, generated


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
    models_in_order = list(dict.fromkeys(spec.model for spec, _ in plans))
    for model in models_in_order:
        group = [(spec, jobs) for spec, jobs in plans if spec.model == model]
        if options.progress:
            print(f"loading {model} for {', '.join(s.name for s, _ in group)}", file=sys.stderr)
        generator = factory(model, group[0][0].field)
        for spec, jobs in group:
            method_rows, method_generated = _run_method(
                spec, jobs, generator, cache, options.batch_size, options.progress
            )
            rows += method_rows
            generated += method_generated
            total += len(jobs)
        del generator
        gc.collect()

    merged = update_manifest(out, rows)
    warnings = [
        f"manifest rows of method {m} come from more than one model or settings "
        "(an earlier run with other settings?); evaluate compares them as one model"
        for m in mixed_generators(merged)
        if m in methods
    ]
    return GenerationResult(out / MANIFEST_NAME, rows, generated, total - generated, warnings)

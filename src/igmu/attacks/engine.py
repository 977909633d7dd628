"""``run_attacks``: attack the first K forget prompts of a task for some methods; write
``DIR/attacks.jsonl`` and the attack images into DIR's cache and manifest.

Models resolve exactly as in ``igmu generate`` (ORG = generator.model; NEGPROMPT = ORG sampled
with the concept as negative prompt; others from the models file's ``methods``), and every attack
targets the model *as sampled* (weights and negative prompt). ORG's images of a prompt (the
targets of white-box attacks) come from the same cache key ``igmu generate --method ORG`` gives
them. Each (method, attack, prompt) result is a file named by what it depends on, written
atomically when its images are in the cache; a rerun reuses it, so a killed run resumes and ends
as an uninterrupted one (only the timings of the redone prompts differ).
"""

from __future__ import annotations

import gc
import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from igmu.attacks.base import (
    FORMAT,
    Attack,
    AttackProblem,
    AttackPrompt,
    PrepareContext,
    get_attack,
)
from igmu.attacks.imaging import generate_outcome, png_to_array
from igmu.attacks.rows import attack_row, manifest_rows
from igmu.attacks.store import ATTACKS_NAME, ResultStore, digest, update_attacks
from igmu.backbones.config import ModelsConfig
from igmu.core.constants import ORG
from igmu.core.errors import ConfigError
from igmu.generation.cache import ImageCache, cache_key
from igmu.generation.manifest import MANIFEST_NAME, update_manifest
from igmu.generation.plan import (
    MethodSpec,
    SettingOverrides,
    base_settings,
    canonical_methods,
    resolve_method,
)
from igmu.pipelines.attackable import AttackedModel
from igmu.pipelines.sources import PipelineSource
from igmu.tasks.model import Task

GeneratorFactory = Callable[[Any, str], Any]  # (PipelineSource, models-file field) -> Generator


@dataclass
class AttackOptions:
    methods: list[str]
    attacks: list[str]
    prompts: int = 4  # the first K forget prompts
    budget: int | None = None  # None: each attack's default
    seed: int = 0
    images_per_prompt: int | None = None  # None: each attack's default
    device: str = "cpu"
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack -> overrides
    overrides: SettingOverrides = field(default_factory=SettingOverrides)
    progress: bool = True


@dataclass
class AttackRunResult:
    attacks_path: Path
    manifest: Path
    rows: list[dict[str, Any]]  # this run's attack rows, in run order
    computed: int
    cached: int


def attack_settings(options: AttackOptions) -> list[tuple[Attack, dict[str, Any]]]:
    chosen, seen = [], set()
    for name in options.attacks:
        attack = get_attack(name)
        if attack.name in seen:
            raise ConfigError(f"--attack names {attack.name} more than once")
        seen.add(attack.name)
        given = dict(options.settings.get(attack.name, {}))
        if options.budget is not None:
            given["budget"] = options.budget
        if options.images_per_prompt is not None and "images" in attack.defaults:
            given["images"] = options.images_per_prompt
        chosen.append((attack, attack.settings(given)))
    unknown = set(options.settings) - seen
    if unknown:
        raise ConfigError(f"--set names attack(s) not run: {', '.join(sorted(unknown))}")
    if not chosen:
        raise ConfigError("--attack: give at least one attack, e.g. text_grad")
    return chosen


def forget_prompts(task: Task, count: int) -> list[AttackPrompt]:
    if count < 1:
        raise ConfigError(f"--prompts must be a positive integer, got {count}")
    prompts = task.prompt_set("forget").prompts()[:count]
    return [AttackPrompt(p.class_name, p.class_index, p.prompt_index, p.text) for p in prompts]


def prompt_seed(seed: int, prompt: AttackPrompt) -> int:
    """The seed of one prompt's attack: every method is attacked with the same randomness."""
    text = f"{seed}|{prompt.key}|{prompt.text}".encode()
    return int(hashlib.sha256(text).hexdigest()[:8], 16)


def default_factory(device: str) -> GeneratorFactory:
    from igmu.generation.diffusers_backend import DiffusersGenerator

    def load(source: Any, field_name: str) -> Any:
        return DiffusersGenerator.load(source, field_name, device, 1)

    return load


class _Run:
    """One ``run_attacks`` call: loaded generators, ORG's targets, the cache and the store."""

    def __init__(self, task: Task, out: Path, models: ModelsConfig, options: AttackOptions,
                 factory: GeneratorFactory) -> None:
        self.task, self.options, self.factory = task, options, factory
        self.cache, self.store = ImageCache(out), ResultStore(out)
        self.settings = base_settings(models, options.overrides)
        self.org = resolve_method(ORG, task, models, self.settings)
        self.generators: dict[PipelineSource, Any] = {}

    def generator(self, spec: MethodSpec) -> Any:
        source = spec.pipeline_source  # as igmu generate loads it (base + weights applied)
        if source not in self.generators:
            if self.options.progress:
                print(f"loading {spec.model} ({spec.name})", file=sys.stderr)
            self.generators[source] = self.factory(source, spec.field)
        return self.generators[source]

    def release(self, keep: PipelineSource | None) -> None:
        for source in [s for s in self.generators if s != keep]:
            del self.generators[source]
        gc.collect()

    def target_identity(self) -> dict[str, Any]:
        return {"generator": self.generator(self.org).fingerprint,
                "settings": self.org.settings.as_dict()}

    def targets(self, texts: list[str], seeds: list[int]) -> list[Any]:
        """ORG's images of (text, seed), from the cache or generated into it."""
        generator = self.generator(self.org)
        images = []
        for text, seed in zip(texts, seeds, strict=True):
            key = cache_key(generator.fingerprint, text, seed, self.org.settings)
            if self.cache.has(key):
                images.append(png_to_array(self.cache.path(key).read_bytes()))
            else:
                image = generator.generate([text], [seed], self.org.settings)[0]
                self.cache.put(key, image)
                images.append(image)
        return images


def _attack_method(run: _Run, spec: MethodSpec, chosen: list[tuple[Attack, dict[str, Any]]],
                   prompts: list[AttackPrompt], bar: Any, counts: dict[str, int]
                   ) -> list[dict[str, Any]]:
    options, task = run.options, run.task
    generator = run.generator(spec)
    model = None
    if any(attack.needs_model for attack, _ in chosen):
        model = AttackedModel(generator.pipeline, spec.settings, options.device)
    attacked = {"generator": generator.fingerprint, "settings": spec.settings.as_dict()}
    rows = []
    for attack, settings in chosen:
        identity = {"format": FORMAT, "attack": attack.name, "version": attack.version,
                    "settings": settings, "seed": options.seed}
        fingerprints = {"attacked": digest(attacked), "attack": digest(identity)}
        context = {
            **fingerprints,
            "task": [task.name, task.version, attack.task_identity(task, settings)],
            "targets": run.target_identity() if attack.white_box or attack.needs_targets
            else None,
        }
        prepared: list[Any] = []  # filled on first need
        for prompt in prompts:
            key = digest({**context, "prompt": [prompt.key, prompt.text]})
            row = run.store.load(key)
            if row is None:
                if not prepared:
                    ctx = PrepareContext(model, task, settings, options.seed, run.targets,
                                         run.store, digest(context))
                    prepared.append(attack.prepare(ctx))
                row = _attack_prompt(run, spec, generator, model, attack, settings, prompt,
                                     prepared[0])
                row.update(result_key=key, **{f"{k}_fingerprint": v
                                              for k, v in fingerprints.items()})
                run.store.save(key, row)
                reread = run.store.load(key)  # as a rerun reads it (key order, floats)
                assert reread is not None
                row = reread
                counts["computed"] += 1
            else:
                counts["cached"] += 1
            rows.append(row)
            bar.update(1)
            bar.set_postfix(method=spec.name, attack=attack.name, refresh=False)
    return rows


def _attack_prompt(run: _Run, spec: MethodSpec, generator: Any, model: AttackedModel | None,
                   attack: Attack, settings: dict[str, Any], prompt: AttackPrompt,
                   prepared: Any) -> dict[str, Any]:
    seeds = attack.target_seeds(settings)
    targets = run.targets([prompt.text] * len(seeds), seeds) if seeds else []
    started, cpu = time.perf_counter(), time.process_time()
    problem = AttackProblem(model, run.task, prompt, settings,
                            prompt_seed(run.options.seed, prompt), run.options.seed, targets,
                            prepared)
    outcome = attack.run(problem)
    searched = time.perf_counter() - started
    images = generate_outcome(outcome, generator, model, spec.settings, run.cache)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    embedding = None
    if outcome.kind == "embedding":
        from igmu.attacks.imaging import vectors_bytes

        path, sha = run.store.save_embedding(vectors_bytes(outcome.vectors))
        embedding = {"path": path, "sha256": sha, "positions": outcome.positions}
    return attack_row(
        task=run.task, spec=spec, attack=attack, settings=settings, prompt=prompt,
        outcome=outcome, images=[(seed, run.cache.relpath(k), k, sha)
                                 for seed, (k, sha) in zip(outcome.image_seeds, images,
                                                           strict=True)],
        embedding=embedding, seed=run.options.seed, prompt_seed=problem.seed,
        target_seeds=seeds, model_fingerprint=generator.fingerprint,
        wall_seconds=wall, search_seconds=searched, cpu_seconds=cpu,
    )


def run_attacks(task: Task, out: Path, models: ModelsConfig, options: AttackOptions,
                factory: GeneratorFactory | None = None) -> AttackRunResult:
    """Attack the first ``options.prompts`` forget prompts of ``task`` for every method."""
    chosen = attack_settings(options)
    methods = canonical_methods(options.methods, models)
    prompts = forget_prompts(task, options.prompts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(task, out, models, options, factory or default_factory(options.device))
    specs = [resolve_method(name, task, models, run.settings) for name in methods]
    run.cache.remove_stale_tmp()
    run.store.clean()
    counts = {"computed": 0, "cached": 0}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(specs) * len(chosen) * len(prompts), desc="attack", unit="prompt",
               disable=not options.progress)
    needs_org = any(a.white_box or a.needs_targets for a, _ in chosen)
    try:
        # Models in first-use order; NEGPROMPT shares ORG's pipeline; ORG stays loaded for
        # the targets of white-box attacks.
        for source in dict.fromkeys(spec.pipeline_source for spec in specs):
            for spec in [s for s in specs if s.pipeline_source == source]:
                rows += _attack_method(run, spec, chosen, prompts, bar, counts)
            run.release(run.org.pipeline_source if needs_org else None)
    finally:
        bar.close()
    update_attacks(out, rows)
    update_manifest(out, [m for row in rows for m in manifest_rows(row)])
    return AttackRunResult(out / ATTACKS_NAME, out / MANIFEST_NAME, rows, counts["computed"],
                           counts["cached"])


__all__ = ["AttackOptions", "AttackRunResult", "run_attacks"]

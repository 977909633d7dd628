"""Which model and settings each method is generated with, and which images it needs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from igmu.backbones.config import DEFAULTS, LIST_FIELDS, WEIGHT_FIELDS, ModelsConfig
from igmu.core.constants import METHOD_CARD, NEGPROMPT, ORG, PROMPT_SET_KINDS
from igmu.core.errors import ConfigError
from igmu.core.registry import did_you_mean
from igmu.generation.base import GenerationSettings
from igmu.pipelines.card import read_method_card
from igmu.pipelines.guidance import SafeLatentGuidance
from igmu.pipelines.sources import PipelineSource
from igmu.tasks.model import Task

BUILTIN_METHODS = (ORG, NEGPROMPT)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    model: str  # what is loaded, in words: the pipeline, or the base + the weights applied
    field: str  # the models-file field that names the model (for error messages)
    settings: GenerationSettings
    source: PipelineSource | None = None  # None: `model` is a plain pipeline reference

    @property
    def pipeline_source(self) -> PipelineSource:
        """What to load (`igmu.pipelines.sources.load_source`)."""
        return self.source or PipelineSource(self.model, self.field)


@dataclass(frozen=True)
class ImageJob:
    method: str
    prompt_set: str
    class_name: str
    class_index: int
    prompt_index: int
    seed: int
    prompt: str


@dataclass(frozen=True)
class SettingOverrides:
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None


def base_settings(models: ModelsConfig, overrides: SettingOverrides) -> GenerationSettings:
    generator = {**DEFAULTS["generator"], **models.get("generator")}
    return GenerationSettings(
        num_inference_steps=overrides.steps if overrides.steps is not None else generator["steps"],
        guidance_scale=(
            overrides.guidance if overrides.guidance is not None else generator["guidance"]
        ),
        height=overrides.height if overrides.height is not None else generator["height"],
        width=overrides.width if overrides.width is not None else generator["width"],
    )


def known_methods(models: ModelsConfig) -> list[str]:
    return list(dict.fromkeys([*BUILTIN_METHODS, *models.get("methods")]))


def _from_card(
    name: str, model: str, field: str, settings: GenerationSettings, explicit_negative: bool
) -> tuple[str, str, GenerationSettings, dict[str, Any]]:
    """Apply a method card: its negative prompt and sampler guidance and, for a folder without a
    pipeline, its base model plus the weights of the method's published form (``models_entry``,
    relative to the folder), as fields of `PipelineSource`."""
    folder = Path(model).expanduser()
    card = read_method_card(folder) if folder.is_dir() else None
    if card is None:
        return model, field, settings, {}
    if not explicit_negative and card.get("negative_prompt") is not None:
        settings = replace(settings, negative_prompt=str(card["negative_prompt"]))
    if card.get("sampler_guidance") is not None:
        guidance = SafeLatentGuidance.from_dict(card["sampler_guidance"], str(folder / METHOD_CARD))
        settings = replace(settings, sampler_guidance=guidance)
    if (folder / "model_index.json").is_file():
        return model, field, settings, {}
    weights = _form_weights(card.get("models_entry") or {}, folder)
    base = card.get("base") or {}
    location, reference = base.get("location"), base.get("reference")
    where = f"{field} (base of {folder / METHOD_CARD})"
    if location and Path(location).is_dir():
        return str(location), where, settings, weights
    if reference:
        return str(reference), where, settings, weights
    raise ConfigError(
        f"{folder / METHOD_CARD}: method {name!r} has no pipeline folder and its card "
        "names no base model"
    )


def _form_weights(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "lora_scale":
            fields[key] = float(value)
        elif key in LIST_FIELDS:
            fields[key] = tuple(str(folder / v) for v in value)
        elif key in WEIGHT_FIELDS:
            fields[key] = str(folder / value)
        else:
            raise ConfigError(f"{folder / METHOD_CARD}: field 'models_entry.{key}' is not a "
                              "weights field")
    return fields


def resolve_method(
    name: str, task: Task, models: ModelsConfig, settings: GenerationSettings
) -> MethodSpec:
    """ORG = generator.model; NEGPROMPT = ORG + the concept as negative prompt (unless the
    models file maps NEGPROMPT); any other name = its `methods` entry."""
    methods = models.get("methods")
    generator = {**DEFAULTS["generator"], **models.get("generator")}
    if name == ORG:
        return _spec(name, PipelineSource(str(generator["model"])), settings)
    if name in methods:
        entry = methods[name]
        entry = {"model": entry} if isinstance(entry, str) else dict(entry)
        explicit = "negative_prompt" in entry
        field = f"methods.{name}"
        source = PipelineSource.from_entry(entry, str(generator["model"]), field)
        settings = replace(settings, negative_prompt=entry.get("negative_prompt"))
        if not source.augmented and ("model" in entry or "base" in entry):
            model, field, settings, weights = _from_card(
                name, source.base, field, settings, explicit)
            source = replace(source, base=model, field=field, **weights)
        return _spec(name, source, settings)
    if name == NEGPROMPT:
        return _spec(name, PipelineSource(str(generator["model"])),
                     replace(settings, negative_prompt=task.concept_name))
    raise ConfigError(
        f"Unknown method {name!r}: not built in (ORG, NEGPROMPT) and not in the models file's "
        f"'methods' ({models.source}).{did_you_mean(name, known_methods(models))}"
    )


def _spec(name: str, source: PipelineSource, settings: GenerationSettings) -> MethodSpec:
    return MethodSpec(name, source.describe(), source.field, settings, source)


def canonical_methods(names: list[str], models: ModelsConfig) -> list[str]:
    """The method names as the models file spells them (``org`` -> ``ORG`` when unambiguous);
    unknown names fail with "did you mean"."""
    known = known_methods(models)
    if not names:
        raise ConfigError("--method: give at least one method, e.g. ORG")
    canonical = []
    for name in names:
        if name not in known:
            folded = [k for k in known if k.lower() == name.lower()]
            if len(folded) != 1:
                raise ConfigError(
                    f"Unknown method {name!r}: not built in (ORG, NEGPROMPT) and not in the "
                    f"models file's 'methods' ({models.source}).{did_you_mean(name, known)}"
                )
            name = folded[0]
        canonical.append(name)
    duplicates = sorted({n for n in canonical if canonical.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--method names {', '.join(duplicates)} more than once")
    return canonical


def method_prompt_sets(
    task: Task, method: str, requested: list[str] | None, reference_method: str = ORG
) -> list[str]:
    """The prompt sets a method is generated on. By default every set of the task except
    `stripped`, which only the reference method needs, and only for attribute tasks (their
    fidelity reference is ORG on the concept-stripped prompts)."""
    if requested:
        for name in requested:
            task.prompt_set(name)  # unknown names fail here, with "did you mean"
        sets = list(dict.fromkeys(requested))
        if method != reference_method:
            sets = [s for s in sets if s != "stripped"]
        return sets
    sets = [s for s in PROMPT_SET_KINDS if s in task.prompt_sets and s != "stripped"]
    attribute = task.reference == "stripped" and "stripped" in task.prompt_sets
    if method == reference_method and attribute:
        sets.append("stripped")
    return sets


def plan_jobs(
    task: Task,
    method: str,
    prompt_sets: list[str],
    images_per_prompt: int,
    max_prompts_per_class: int | None = None,
) -> list[ImageJob]:
    """Image k of prompt (class i, prompt j) uses seed k, for every method (images pair by key)."""
    jobs = []
    for set_name in prompt_sets:
        prompt_set = task.prompt_set(set_name)
        for class_index, (class_name, prompts) in enumerate(prompt_set.classes):
            chosen = prompts if max_prompts_per_class is None else prompts[:max_prompts_per_class]
            for prompt_index, text in enumerate(chosen):
                for seed in range(images_per_prompt):
                    jobs.append(
                        ImageJob(
                            method, set_name, class_name, class_index, prompt_index, seed, text
                        )
                    )
    return jobs

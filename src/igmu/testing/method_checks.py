"""Checks every unlearning method shares (tests and benchmarks/method_defaults.py): load an output
folder the way `igmu generate` does (through a models-file entry), and count how often the
MiniWorld judges see the concept on a task's forget prompts. A "model" is a pipeline or a
`SampledMethod` (a pipeline with its inference-time negative prompt or sampler guidance)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SampledMethod:
    """A method as ``igmu generate`` samples it: the pipeline, plus the negative prompt
    (NEGPROMPT) or sampler guidance (SLD) its card asks for."""

    pipeline: Any
    negative_prompt: str | None = None
    sampler_guidance: Any = None


def load_sampled(folder: Path, task: Any, models: Any = None) -> SampledMethod:
    """The method ``igmu generate`` samples for a models-file entry ``folder`` (a pipeline
    folder, or a published form or inference-time method named by its method card)."""
    from igmu.backbones.config import ModelsConfig, default_models_config
    from igmu.generation.plan import SettingOverrides, base_settings, resolve_method
    from igmu.pipelines.sources import load_source

    models = models or default_models_config(task)
    values = {**models.values, "methods": {"X": str(folder)}}
    config = replace(models, values=values) if isinstance(models, ModelsConfig) else models
    spec = resolve_method("X", task, config, base_settings(config, SettingOverrides()))
    pipeline = load_source(spec.pipeline_source)
    pipeline.set_progress_bar_config(disable=True)
    return SampledMethod(pipeline, spec.settings.negative_prompt, spec.settings.sampler_guidance)


def load_method(folder: Path, task: Any, models: Any = None) -> Any:
    """The pipeline of ``load_sampled`` (for methods that change weights only)."""
    return load_sampled(folder, task, models).pipeline


def sample(model: Any, prompts: list[str], seeds: list[int], steps: int = 8,
           guidance: float = 2.0, size: int = 32, negative_prompt: str | None = None
           ) -> list[np.ndarray]:
    """uint8 images, one CPU generator per image (an image depends on its seed alone), from a
    pipeline or a `SampledMethod` (then with its negative prompt and sampler guidance)."""
    import torch

    from igmu.generation.base import to_uint8_images
    from igmu.pipelines.guidance import sampling_with

    pipeline, sampler = model, None
    if isinstance(model, SampledMethod):
        pipeline, sampler = model.pipeline, model.sampler_guidance
        negative_prompt = negative_prompt or model.negative_prompt
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with sampling_with(sampler, pipeline, len(prompts), steps):
        out = pipeline(prompt=list(prompts), generator=generators, guidance_scale=guidance,
                       num_inference_steps=steps, height=size, width=size, output_type="np",
                       negative_prompt=[negative_prompt] * len(prompts) if negative_prompt
                       else None)
    return to_uint8_images(out.images)


def forget_prompts(task: Any, count: int) -> list[str]:
    """The first ``count`` forget prompts of a task, class by class in order."""
    prompts = [p for _, texts in task.prompt_set("forget").classes for p in texts]
    return prompts[:count]


def residual_rate(model: Any, task: Any, count: int = 16, steps: int = 8) -> float:
    """Share of the task's first ``count`` forget prompts (seed 0) whose image the task's first
    detector (a MiniWorld judge) flags."""
    from igmu.backbones.config import default_models_config
    from igmu.detectors.base import build_detector

    detector = build_detector(task.guidance["detectors"][0], default_models_config(task))
    prompts = forget_prompts(task, count)
    images = sample(model, prompts, [0] * len(prompts), steps=steps)
    flags = [detector.verdict(raw).flagged for raw in detector.analyse(images)]
    return float(np.mean(flags))


def training_rates(model: Any, task: Any, count: int = 16, steps: int = 8
                   ) -> dict[str, float]:
    """What a method's MiniWorld defaults may be chosen by: only the task's *training* prompts
    (``unlearning.erase`` and ``unlearning.preserve``), never an evaluated prompt set.

    ``erase_residual``: share of the first ``count`` erase prompts whose image the task's
    detector flags (lower is better); ``preserve_accuracy``: share of the first ``count``
    preserve prompts drawn with every factor they name right, per the judges (higher is
    better)."""
    from igmu.backbones.config import default_models_config
    from igmu.detectors.base import build_detector

    detector = build_detector(task.guidance["detectors"][0], default_models_config(task))
    erase = [prompt for prompt, _ in task.unlearning.erase[:count]]
    preserve = list(task.unlearning.preserve[:count])
    images = sample(model, erase + preserve, [0] * (len(erase) + len(preserve)), steps=steps)
    raws = detector.analyse(images)
    flags = [detector.verdict(raw).flagged for raw in raws[: len(erase)]]
    right = []
    for prompt, raw in zip(preserve, raws[len(erase):], strict=True):
        asked = detector.prompt_labels(prompt)
        drawn = detector.verdict(raw).details["drawn"]
        right.append(all(drawn.get(h) == want for h, want in asked.items()))
    return {"erase_residual": float(np.mean(flags)), "preserve_accuracy": float(np.mean(right))}


def save_tiny_base(root: Path, make: Any) -> dict[str, Any]:
    """A tiny pipeline (``make(tokenizer_dir=...)``) saved as ``root/base`` with a models file
    that generates 32 px images in 2 steps: {"base", "models", "tokenizer"}."""
    import yaml

    pipeline = make(tokenizer_dir=root / "tokenizer_files")
    pipeline.save_pretrained(str(root / "base"), safe_serialization=True)
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"generator": {
        "model": str(root / "base"), "steps": 2, "height": 32, "width": 32}}))
    return {"base": root / "base", "models": models, "tokenizer": pipeline.tokenizer}


def module_state(module: Any) -> dict[str, Any]:
    """A detached copy of every tensor of a torch module (to compare before and after)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def is_xattn_kv(name: str) -> bool:
    """A parameter of a cross-attention key or value projection (``attn2.to_k/to_v``)."""
    parts = name.split(".")
    return "attn2" in parts and parts[parts.index("attn2") + 1] in ("to_k", "to_v")


def same_images(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

"""SLD — Safe Latent Diffusion (Schramowski et al., CVPR 2023, arXiv:2211.05105; code
github.com/ml-research/safe-latent-diffusion, and diffusers' ``StableDiffusionPipelineSafe``,
``perform_safety_guidance``): an inference-time method. No weight changes; every image is
sampled with a third UNet pass on a safety concept that steers classifier-free guidance away
from it (the equations, and how igmu applies them to any model family, in
`igmu.pipelines.guidance`).

The method card carries ``sampler_guidance`` (kind, concept, scale s_S, warm-up delta, threshold
lambda, momentum s_m and beta_m); ``igmu generate`` and ``igmu attack`` read it from the card and
sample the model with it, as they read NEGPROMPT's negative prompt, and it is part of every
image's cache key.

Settings: ``preset`` is one of the paper's configurations (weak, medium, strong, max; Table 2;
the authors' and diffusers' call defaults are ``medium``); ``scale``, ``warmup``, ``threshold``,
``momentum_scale``, ``momentum_beta`` override single values (None: the preset's). ``concept``
is the safety concept (None: the task's concept name, or the ``concepts`` given joined by ", ").

Deliberate differences: those of `igmu.pipelines.guidance` (warm-up as a share of the steps;
the safety pass a UNet call of its own; v-prediction models guided in v); and the default
safety concept is the task's concept, not the authors' fixed list of inappropriate-content
words (that list serves I2P; an igmu task names its own concept, and ``concept`` takes any
text).

MiniWorld defaults (``world_defaults``): the preset chosen by ``benchmarks/method_defaults.py``
on mini_object's training prompts (see docs/design/unlearning-methods.md).
"""

from __future__ import annotations

from typing import Any

from igmu.core.errors import ConfigError
from igmu.methods.base import (
    EditOutcome,
    UnlearningMethod,
    concepts_and_preserved,
    register_method,
)
from igmu.pipelines.guidance import PRESETS, SafeLatentGuidance
from igmu.tasks import Task

OVERRIDES = ("scale", "warmup", "threshold", "momentum_scale", "momentum_beta")


@register_method
class SLD(UnlearningMethod):
    name = "SLD"
    summary = ("Inference-time: Safe Latent Diffusion, a safety-concept pass that steers "
               "classifier-free guidance away from the concept (no weight changes)")
    defaults: dict[str, Any] = {
        "concepts": None,
        "concept": None,
        "preset": "medium",
        **dict.fromkeys(OVERRIDES),
    }
    world_defaults = {"miniworld": {"preset": "max"}}
    changes_weights = False
    card_only_allowed = True

    def check(self, settings: dict[str, Any], task: Task) -> None:
        self.guidance(settings, task)

    def guidance(self, settings: dict[str, Any], task: Task) -> SafeLatentGuidance:
        preset = settings["preset"]
        if preset not in PRESETS:
            raise ConfigError(f"Method SLD: setting 'preset' must be one of "
                              f"{', '.join(PRESETS)}, got {preset!r}")
        values = dict(PRESETS[preset])
        for key in OVERRIDES:  # None by default, so given as text on the command line
            if settings[key] is not None:
                try:
                    values[key] = float(settings[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"Method SLD setting {key!r} must be a number, got "
                                      f"{settings[key]!r}") from None
        concept = settings["concept"]
        if concept is None:
            given = settings["concepts"]
            concept = ", ".join(given) if given else task.concept_name
        try:
            return SafeLatentGuidance(concept=str(concept), **values)
        except ConfigError as exc:
            raise ConfigError(f"Method SLD: {exc}") from None

    def edit(self, pipeline: Any, task: Task, settings: dict[str, Any]) -> EditOutcome:
        guidance = self.guidance(settings, task)
        concepts, _ = concepts_and_preserved(
            task, {"concepts": settings["concepts"] or [guidance.concept], "preserve": []})
        return EditOutcome(
            concepts=concepts,
            preserved=[],
            hyperparameters={"preset": settings["preset"], **guidance.as_dict()},
            sampler_guidance=guidance.as_dict(),
        )

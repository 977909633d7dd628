"""A `Generator` backed by any diffusers pipeline folder (Stable Diffusion 1.x, MiniWorld, ...).

The pipeline is called as ``pipeline(prompt=[...], negative_prompt=[...] (only when set),
num_inference_steps=, guidance_scale=, height=, width=, generator=[torch.Generator, ...],
output_type="np")`` and must return ``.images`` (float arrays in [0, 1] or PIL images). Loading
and fingerprinting live in `igmu.generation.pipelines`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from igmu.errors import ConfigError
from igmu.generation.base import GenerationSettings, to_uint8_images
from igmu.generation.pipelines import (
    FINGERPRINT_FORMAT,
    load_pipeline,
    models_file_advice,
    pipeline_fingerprint,
    resolve_pipeline_folder,
)


class DiffusersGenerator:
    """Runs a diffusers pipeline; see the module docstring for the call it makes.

    ``pipeline_batch == 1`` (the default) runs every image through the pipeline on its own:
    float arithmetic then cannot depend on which images share a call, so an image is the same
    whatever batch it was generated in (``batch_invariant``). ``pipeline_batch > 1`` runs up to
    that many images per pipeline call (faster on GPUs); pixels then depend slightly (about one
    grey level in a few pixels) on the call's size and members, so it joins the fingerprint.
    """

    def __init__(
        self,
        pipeline: Any,
        reference: str = "<in-memory pipeline>",
        device: str = "cpu",
        pipeline_batch: int = 1,
    ) -> None:
        import torch

        if pipeline_batch < 1:
            raise ConfigError("pipeline_batch must be at least 1")
        self.reference = reference
        self.pipeline_batch = int(pipeline_batch)
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"--device {device!r}: {exc}") from None
        self.model_fingerprint = pipeline_fingerprint(pipeline)
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        try:
            self.pipeline = pipeline.to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(
                f"--device {device!r}: cannot move the pipeline there: {exc}"
            ) from None
        identity = {
            "format": FINGERPRINT_FORMAT,
            "model": self.model_fingerprint,
            "device": self.device.type,
            "dtype": "float32",
            "pipeline_batch": self.pipeline_batch,
        }
        self.fingerprint = hashlib.sha256(
            json.dumps(identity, sort_keys=True).encode("utf-8")
        ).hexdigest()

    @classmethod
    def load(
        cls, reference: str, field: str, device: str = "cpu", pipeline_batch: int = 1
    ) -> DiffusersGenerator:
        location = resolve_pipeline_folder(
            reference, f"models file field {field!r}", models_file_advice(field)
        )
        return cls(load_pipeline(location, reference, field), reference, device, pipeline_batch)

    @property
    def batch_invariant(self) -> bool:
        return self.pipeline_batch == 1

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.reference,
            "pipeline": type(self.pipeline).__name__,
            "model_fingerprint": self.model_fingerprint,
            "device": self.device.type,
            "pipeline_batch": self.pipeline_batch,
        }

    def generate(
        self, prompts: list[str], seeds: list[int], settings: GenerationSettings
    ) -> list[np.ndarray]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        images: list[np.ndarray] = []
        for start in range(0, len(prompts), self.pipeline_batch):
            stop = start + self.pipeline_batch
            images += self._call(prompts[start:stop], seeds[start:stop], settings)
        return images

    def _call(
        self, prompts: list[str], seeds: list[int], settings: GenerationSettings
    ) -> list[np.ndarray]:
        import torch

        # One CPU generator per image: the initial noise is the seed's alone, on every device.
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        kwargs: dict[str, Any] = {
            "prompt": list(prompts),
            "num_inference_steps": settings.num_inference_steps,
            "guidance_scale": settings.guidance_scale,
            "height": settings.height,
            "width": settings.width,
            "generator": generators,
            "output_type": "np",
        }
        if settings.negative_prompt is not None:
            kwargs["negative_prompt"] = [settings.negative_prompt] * len(prompts)
        try:
            with torch.no_grad():
                result = self.pipeline(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"pipeline {self.reference} ({type(self.pipeline).__name__}) rejected the "
                f"generation settings {settings.as_dict()}: {exc}"
            ) from None
        images = result.images if hasattr(result, "images") else result[0]
        arrays = to_uint8_images(images)
        if len(arrays) != len(prompts):
            raise RuntimeError(
                f"pipeline {self.reference} returned {len(arrays)} images for "
                f"{len(prompts)} prompts"
            )
        return arrays

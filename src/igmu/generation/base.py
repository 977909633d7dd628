"""What a text-to-image generator is to IGMU: a fingerprint and a `generate` call.

An image is determined by (generator fingerprint, prompt, seed, settings): the fingerprint covers
everything about the generator that changes pixels (weights, scheduler configuration, pipeline
class, device type, dtype, batching), `GenerationSettings` the sampling knobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from igmu.core.errors import ConfigError
from igmu.pipelines.guidance import SafeLatentGuidance


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings; every field is hashed into an image's cache key."""

    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    negative_prompt: str | None = None
    # inference-time guidance of a method (SLD); None for every other method
    sampler_guidance: SafeLatentGuidance | None = None

    def __post_init__(self) -> None:
        for name in ("num_inference_steps", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"generation setting {name!r} must be a positive integer")
        if isinstance(self.guidance_scale, bool) or not isinstance(
            self.guidance_scale, (int, float)
        ):
            raise ConfigError("generation setting 'guidance_scale' must be a number")
        # 7 and 7.0 are one setting: normalise so the cache key does not tell them apart.
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ConfigError("generation setting 'negative_prompt' must be text or null")
        if self.sampler_guidance is not None:
            object.__setattr__(self, "sampler_guidance", SafeLatentGuidance.from_dict(
                self.sampler_guidance, "generation settings"))

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.sampler_guidance is None:
            # absent rather than null: the cache keys of methods without it stay what they were
            del values["sampler_guidance"]
        return values


@runtime_checkable
class Generator(Protocol):
    """A text-to-image model IGMU can run.

    ``generate`` returns one ``uint8`` array ``(height, width, 3)`` per prompt. Image ``i`` must
    depend only on ``(prompts[i], seeds[i], settings)`` and on what ``fingerprint`` covers, never
    on the other prompts of the call, so that batching, caching and resuming cannot change an
    image.
    """

    @property
    def fingerprint(self) -> str: ...

    def generate(
        self, prompts: list[str], seeds: list[int], settings: GenerationSettings
    ) -> list[np.ndarray]: ...


def to_uint8_images(images: Any) -> list[np.ndarray]:
    """A pipeline's output (float array in [0, 1] (N, H, W, C), or PIL images) as uint8 RGB."""
    if isinstance(images, np.ndarray):
        batch: Sequence[Any] = list(images) if images.ndim == 4 else [images]
    else:
        batch = list(images)
    out = []
    for image in batch:
        if isinstance(image, np.ndarray):
            array = image
            if array.dtype != np.uint8:
                # diffusers' own numpy_to_pil rounding: (x * 255).round()
                array = (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255).round()
                array = array.astype(np.uint8)
        else:  # PIL.Image
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"generator returned an image of shape {array.shape}")
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        elif array.shape[-1] == 4:
            array = array[..., :3]
        out.append(np.ascontiguousarray(array))
    return out

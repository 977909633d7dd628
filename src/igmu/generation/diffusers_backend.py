"""A `Generator` backed by any diffusers pipeline folder (Stable Diffusion 1.x, MiniWorld, ...).

The pipeline is called as ``pipeline(prompt=[...], negative_prompt=[...] (only when set),
num_inference_steps=, guidance_scale=, height=, width=, generator=[torch.Generator, ...],
output_type="np")`` and must return ``.images`` (float arrays in [0, 1] or PIL images); a
method's inference-time guidance (SLD, ``settings.sampler_guidance``) is applied to that call by
`igmu.pipelines.guidance.sampling_with`. Loading and fingerprinting live in `igmu.pipelines.load`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.generation.base import GenerationSettings, to_uint8_images
from igmu.pipelines.guidance import sampling_with
from igmu.pipelines.load import FINGERPRINT_FORMAT, pipeline_fingerprint
from igmu.pipelines.sources import PipelineSource, load_source


class DiffusersGenerator:
    """Runs a diffusers pipeline; see the module docstring for the call it makes.

    ``pipeline_batch == 1`` runs every image through the pipeline on its own: float arithmetic
    then cannot depend on which images share a call, so an image is the same whatever batch it
    was generated in (``batch_invariant``). ``pipeline_batch > 1`` (what ``igmu generate`` uses
    by default) runs up to that many images per pipeline call; pixels then depend slightly
    (about one grey level in a few pixels) on the call's size and members, so the size joins
    the fingerprint and the members the cache keys. The fingerprint also covers the model
    (every weight as loaded), the device type, the dtype and, on the CPU, the torch thread count
    at construction: CPU kernels split their reductions by thread, so 1 and 2 threads can differ
    by one grey level in a few pixels. Every call runs at that count (restored after), so an
    image's bytes are what its key names whatever the process's threads are later.
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
        self.dtype = _dtype_name(pipeline)
        self.family = _family(pipeline)
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        try:
            self.pipeline = pipeline.to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(
                f"--device {device!r}: cannot move the pipeline there: {exc}"
            ) from None
        # GPU kernels do not depend on the CPU thread count; CPU ones do.
        self.cpu_threads = torch.get_num_threads() if self.device.type == "cpu" else None
        identity = {
            "format": FINGERPRINT_FORMAT,
            "model": self.model_fingerprint,
            "device": self.device.type,
            "dtype": self.dtype,
            "pipeline_batch": self.pipeline_batch,
        }
        if self.cpu_threads is not None:
            identity["cpu_threads"] = self.cpu_threads
        self.fingerprint = hashlib.sha256(
            json.dumps(identity, sort_keys=True).encode("utf-8")
        ).hexdigest()

    @classmethod
    def load(
        cls,
        reference: str | PipelineSource,
        field: str,
        device: str = "cpu",
        pipeline_batch: int = 1,
        dtype: str | None = None,
    ) -> DiffusersGenerator:
        """Load a pipeline folder / hub id, or a models-file entry (`PipelineSource`: a base
        plus weights applied), in ``dtype`` (default float32)."""
        source = reference if isinstance(reference, PipelineSource) else PipelineSource(
            str(reference), field)
        pipeline = load_source(source, dtype=dtype)
        return cls(pipeline, source.describe(), device, pipeline_batch)

    @property
    def batch_invariant(self) -> bool:
        return self.pipeline_batch == 1

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.reference,
            "pipeline": type(self.pipeline).__name__,
            "model_fingerprint": self.model_fingerprint,
            "device": self.device.type,
            "dtype": self.dtype,
            "family": None if self.family is None else self.family.name,
            "pipeline_batch": self.pipeline_batch,
            "cpu_threads": self.cpu_threads,
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

    def generate_from_conditioning(
        self, cond: Any, seeds: list[int], settings: GenerationSettings
    ) -> list[np.ndarray]:
        """Images from a `Conditioning` (one row per seed; e.g. an attack's soft prompt),
        through the same pipeline call as ``generate`` with the prompts replaced by the family
        adapter's ``pipeline_kwargs``; the negative prompt and CFG are the settings'."""
        if self.family is None:
            raise ConfigError(f"{type(self.pipeline).__name__} is of no known model family")
        cond = cond.expand(len(seeds)).to(device=self.device, dtype=self.family.dtype)
        images: list[np.ndarray] = []
        for start in range(0, len(seeds), self.pipeline_batch):
            part = cond.rows(slice(start, start + self.pipeline_batch))
            images += self._call(None, seeds[start : start + self.pipeline_batch], settings,
                                 self.family.pipeline_kwargs(part))
        return images

    def _call(
        self, prompts: list[str] | None, seeds: list[int], settings: GenerationSettings,
        conditioning: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        import torch

        # One CPU generator per image: the initial noise is the seed's alone, on every device.
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        kwargs: dict[str, Any] = {
            **({"prompt": list(prompts)} if prompts is not None else conditioning or {}),
            "num_inference_steps": settings.num_inference_steps,
            "guidance_scale": settings.guidance_scale,
            "height": settings.height,
            "width": settings.width,
            "generator": generators,
            "output_type": "np",
        }
        if settings.negative_prompt is not None:
            kwargs["negative_prompt"] = [settings.negative_prompt] * len(seeds)
        guidance = settings.sampler_guidance
        try:
            with torch.no_grad(), _torch_threads(self.cpu_threads), sampling_with(
                    guidance, self.pipeline, len(seeds), settings.num_inference_steps):
                result = self.pipeline(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"pipeline {self.reference} ({type(self.pipeline).__name__}) rejected the "
                f"generation settings {settings.as_dict()}: {exc}"
            ) from None
        images = result.images if hasattr(result, "images") else result[0]
        arrays = to_uint8_images(images)
        if len(arrays) != len(seeds):
            raise RuntimeError(
                f"pipeline {self.reference} returned {len(arrays)} images for "
                f"{len(seeds)} prompts"
            )
        return arrays


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run at ``count`` torch threads (None: as is), restoring the process's count after."""
    import torch

    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dtype_name(pipeline: Any) -> str:
    unet = getattr(pipeline, "unet", None)
    if unet is None or not hasattr(unet, "dtype"):
        return "float32"
    return str(unet.dtype).replace("torch.", "")


def _family(pipeline: Any) -> Any:
    """The pipeline's family adapter, or None for a pipeline of no known family (it still
    generates from prompts through its own ``__call__``)."""
    from igmu.families import family_of

    try:
        return family_of(pipeline)
    except ConfigError:
        return None

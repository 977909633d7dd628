"""The base pipeline a method edits: load it privately, check its family, encode prompts.

Built-in methods work on any pipeline of a family `igmu.families` knows (Stable Diffusion
1.x/2.x, SDXL, the MiniWorld) through its `FamilyAdapter`. Loading goes through
`igmu.pipelines.sources`, as generation does, so a method's base may be any models-file entry
(a pipeline folder plus replaced or added weights).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError, ModelNotFoundError
from igmu.families.base import (  # noqa: F401  (re-exported for methods and attacks)
    cross_attention_modules,
    cross_attention_projections,
)

BASE_ADVICE = "Give a local pipeline folder with --base DIR"


@dataclass(frozen=True)
class BaseInfo:
    """Where the base pipeline came from and what its weights were."""

    reference: str  # what the user gave: a folder, a hub id, or "<in-memory pipeline>"
    location: str | None  # local folder it was loaded from (None for a pipeline object)
    weights_sha256: str  # weights_fingerprint(folder), or a tensor hash of a pipeline object

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "location": self.location,
            "weights_sha256": self.weights_sha256,
        }


def resolve_pipeline_location(reference: str) -> str:
    """A local pipeline folder as is; a hub id from the cache (offline) or downloaded."""
    from igmu.pipelines.load import resolve_pipeline_folder

    return resolve_pipeline_folder(reference, "base model", BASE_ADVICE)


def base_info_only(base: Any) -> BaseInfo:
    """Fingerprint the base without loading it (for methods that write only a card)."""
    from igmu.backbones.weights import weights_fingerprint
    from igmu.pipelines.load import pipeline_state_sha256

    if isinstance(base, str | os.PathLike):
        location = resolve_pipeline_location(str(base))
        return BaseInfo(str(base), location, weights_fingerprint(Path(location)))
    _check_components(base, "<in-memory pipeline>")
    return BaseInfo("<in-memory pipeline>", None, pipeline_state_sha256(base))


def load_pipeline(base: Any, progress: bool = True, dtype: str | None = None
                  ) -> tuple[Any, BaseInfo]:
    """(a private pipeline whose UNet may be edited, where it came from). ``base``: a pipeline
    folder or hub id, a `PipelineSource` (a models-file entry), or a pipeline object."""
    from igmu.backbones.weights import weights_fingerprint
    from igmu.pipelines import load as pipelines
    from igmu.pipelines.sources import PipelineSource, load_source

    if isinstance(base, PipelineSource):
        pipeline = load_source(base, dtype=dtype)
        _check_components(pipeline, base.describe())
        location = resolve_pipeline_location(base.base)
        weights = pipelines.pipeline_state_sha256(pipeline) if base.augmented else (
            weights_fingerprint(Path(location)))
        return pipeline, BaseInfo(base.describe(), location, weights)
    if isinstance(base, str | os.PathLike):
        reference = str(base)
        location = resolve_pipeline_location(reference)
        try:
            pipeline = pipelines.load_pipeline(location, reference, "--base", dtype=dtype)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"Base model {reference}: {exc}") from None
        _check_components(pipeline, reference)
        return pipeline, BaseInfo(reference, location, weights_fingerprint(Path(location)))
    _check_components(base, "<in-memory pipeline>")
    info = BaseInfo("<in-memory pipeline>", None, pipelines.pipeline_state_sha256(base))
    return copy_with_private_unet(base), info


def copy_with_private_unet(pipeline: Any) -> Any:
    """A shallow copy of the pipeline whose UNet is a deep copy (the rest is shared, read-only)."""
    clone = copy.copy(pipeline)
    clone.register_modules(unet=copy.deepcopy(pipeline.unet))
    return clone


def _check_components(pipeline: Any, reference: str) -> None:
    from igmu.families import family_of

    adapter = family_of(pipeline, f"Base model {reference}")
    if not adapter.cross_attention_modules():
        raise ConfigError(f"Base model {reference}: its UNet has no cross-attention (attn2) layers")


def adapter_of(pipeline: Any) -> Any:
    """The pipeline's `FamilyAdapter` (see igmu.families)."""
    from igmu.families import family_of

    return family_of(pipeline)


def token_length(pipeline: Any) -> int:
    """The padded prompt length the pipeline's text encoders see (77 for CLIP)."""
    return adapter_of(pipeline).token_length()


def encode_prompts(pipeline: Any, prompts: list[str], device: Any) -> tuple[Any, Any]:
    """(context [N, L, D] float32 as the pipeline feeds it to the UNet's cross-attention,
    attention masks [N, L] of the first tokenizer). As the pipeline's ``encode_prompt``."""
    adapter = adapter_of(pipeline)
    for encoder in adapter.text_encoders:
        encoder.to(device)
    cond = adapter.encode_prompts(prompts)
    return cond.hidden.float(), adapter.tokenize(prompts).mask

"""The base pipeline a method edits: load it privately, check its parts, encode prompts.

Built-in methods need a diffusers pipeline with a ``UNet2DConditionModel``, a ``CLIPTextModel``
and a tokenizer (Stable Diffusion 1.x, the MiniWorld). Loading goes through
`igmu.generation.pipelines`, as generation does.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igmu.errors import ConfigError, ModelNotFoundError

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
    from igmu.generation.pipelines import resolve_pipeline_folder

    return resolve_pipeline_folder(reference, "base model", BASE_ADVICE)


def base_info_only(base: Any) -> BaseInfo:
    """Fingerprint the base without loading it (for methods that write only a card)."""
    from igmu.backbones.weights import weights_fingerprint
    from igmu.generation.pipelines import pipeline_state_sha256

    if isinstance(base, str | os.PathLike):
        location = resolve_pipeline_location(str(base))
        return BaseInfo(str(base), location, weights_fingerprint(Path(location)))
    _check_components(base, "<in-memory pipeline>")
    return BaseInfo("<in-memory pipeline>", None, pipeline_state_sha256(base))


def load_pipeline(base: Any, progress: bool = True) -> tuple[Any, BaseInfo]:
    """(a private pipeline whose UNet may be edited, where it came from)."""
    from igmu.backbones.weights import weights_fingerprint
    from igmu.generation import pipelines

    if isinstance(base, str | os.PathLike):
        reference = str(base)
        location = resolve_pipeline_location(reference)
        try:
            pipeline = pipelines.load_pipeline(location, reference, "--base")
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
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    problems = []
    unet = getattr(pipeline, "unet", None)
    text_encoder = getattr(pipeline, "text_encoder", None)
    if not isinstance(unet, UNet2DConditionModel):
        problems.append(f"unet is {type(unet).__name__}, not UNet2DConditionModel")
    if not isinstance(text_encoder, CLIPTextModel):
        problems.append(f"text_encoder is {type(text_encoder).__name__}, not CLIPTextModel")
    if getattr(pipeline, "tokenizer", None) is None:
        problems.append("it has no tokenizer")
    if not problems:
        width = text_encoder.config.hidden_size
        cross = unet.config.cross_attention_dim
        if not isinstance(cross, int) or cross != width:
            problems.append(
                f"the UNet's cross_attention_dim ({cross}) differs from the text encoder's "
                f"hidden size ({width})"
            )
        elif not cross_attention_modules(unet):
            problems.append("its UNet has no cross-attention (attn2) layers")
    if problems:
        raise ConfigError(
            f"Base model {reference}: the built-in methods need a diffusers pipeline with a "
            f"UNet2DConditionModel, a CLIPTextModel and a tokenizer (e.g. Stable Diffusion 1.x); "
            + "; ".join(problems)
        )


def cross_attention_modules(unet: Any) -> list[tuple[str, Any]]:
    """(name, Attention) for every cross-attention layer: ``attn2`` in transformer blocks."""
    found = []
    for name, module in unet.named_modules():
        if name.split(".")[-1] == "attn2" and getattr(module, "is_cross_attention", False):
            found.append((name, module))
    return found


def cross_attention_projections(unet: Any, keys: bool = True) -> list[tuple[str, Any]]:
    """(name, Linear) for every cross-attention value projection, and key projection if `keys`."""
    projections = []
    for name, module in cross_attention_modules(unet):
        kinds = ("to_k", "to_v") if keys else ("to_v",)
        for kind in kinds:
            projections.append((f"{name}.{kind}", getattr(module, kind)))
    return projections


def token_length(pipeline: Any) -> int:
    """The padded prompt length the pipeline's text encoder sees (77 for SD-1.x)."""
    limit = int(pipeline.text_encoder.config.max_position_embeddings)
    tokenizer_limit = getattr(pipeline.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        return min(limit, tokenizer_limit)
    return limit


def encode_prompts(pipeline: Any, prompts: list[str], device: Any) -> tuple[Any, Any]:
    """(hidden states [N, L, D] as the pipeline feeds them to the UNet, attention masks [N, L]).

    Matches StableDiffusionPipeline.encode_prompt without clip_skip: padded to max length, the
    text encoder's last hidden state.
    """
    import torch

    length = token_length(pipeline)
    hidden, masks = [], []
    for start in range(0, len(prompts), 32):
        batch = pipeline.tokenizer(
            prompts[start : start + 32],
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            hidden.append(pipeline.text_encoder(batch.input_ids.to(device))[0].float())
        masks.append(batch.attention_mask)
    return torch.cat(hidden), torch.cat(masks)

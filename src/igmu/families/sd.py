"""Stable Diffusion 1.x / 2.x (and the MiniWorld, which is SD-1.x without a VAE).

One CLIP text encoder; the UNet cross-attends to its last hidden state (padded to 77 tokens);
the unconditional branch is the encoded negative prompt, ``""`` by default. As
``StableDiffusionPipeline.encode_prompt`` with ``clip_skip=None``.
"""

from __future__ import annotations

from typing import Any

from igmu.families.base import Conditioning, FamilyAdapter, require_parts
from igmu.families.registry import register_family


@register_family
class StableDiffusion(FamilyAdapter):
    name = "sd"
    description = "Stable Diffusion 1.x/2.x: UNet2DConditionModel + one CLIPTextModel"

    @classmethod
    def problems(cls, pipeline: Any) -> list[str]:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        problems = require_parts(
            pipeline, cls.name,
            {"unet": UNet2DConditionModel, "text_encoder": CLIPTextModel},
        )
        if getattr(pipeline, "tokenizer", None) is None:
            problems.append("it has no tokenizer")
        if getattr(pipeline, "text_encoder_2", None) is not None:
            problems.append("it has a second text encoder (SDXL?)")
        if not problems:
            width = pipeline.text_encoder.config.hidden_size
            cross = pipeline.unet.config.cross_attention_dim
            if cross != width:
                problems.append(f"the UNet's cross_attention_dim ({cross}) differs from the text "
                                f"encoder's hidden size ({width})")
            if pipeline.unet.config.addition_embed_type is not None:
                problems.append("its UNet takes added conditioning "
                                f"({pipeline.unet.config.addition_embed_type})")
        return problems

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return not cls.problems(pipeline)

    def _encoders(self) -> list[tuple[Any, Any]]:
        return [(self.pipeline.tokenizer, self.pipeline.text_encoder)]

    def encode(self, ids: tuple[Any, ...], inputs_embeds: tuple[Any, ...] | None = None
               ) -> Conditioning:
        encoder = self.pipeline.text_encoder
        embeds = inputs_embeds[0] if inputs_embeds else None
        with self._input_embeddings(encoder, embeds):
            hidden = encoder(ids[0].to(encoder.device))[0]
        return Conditioning(hidden.to(dtype=encoder.dtype))

    def unconditional(self, negative_prompt: str | None, batch: int = 1) -> Conditioning:
        return self.encode_prompts([negative_prompt or ""] * batch)

"""Stable Diffusion XL: two text encoders, a pooled embedding and size conditioning.

As ``StableDiffusionXLPipeline`` with ``clip_skip=None``: each encoder's penultimate hidden state
(``hidden_states[-2]``), concatenated along the features (768 + 1280 = 2048 for SDXL) is the
cross-attention context; the second encoder's projected embedding (``text_embeds``) is the pooled
embedding; the UNet also takes ``time_ids`` = (original size, crop top-left, target size) =
(h, w, 0, 0, h, w) for an h x w image. With ``force_zeros_for_empty_prompt`` (SDXL's default) the
unconditional branch without a negative prompt is all zeros, context and pooled.
"""

from __future__ import annotations

from typing import Any

from igmu.families.base import Conditioning, FamilyAdapter, require_parts
from igmu.families.registry import register_family


@register_family
class StableDiffusionXL(FamilyAdapter):
    name = "sdxl"
    description = (
        "Stable Diffusion XL: UNet2DConditionModel with text_time conditioning + CLIPTextModel + "
        "CLIPTextModelWithProjection"
    )

    @classmethod
    def problems(cls, pipeline: Any) -> list[str]:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        problems = require_parts(
            pipeline, cls.name,
            {"unet": UNet2DConditionModel, "text_encoder": CLIPTextModel,
             "text_encoder_2": CLIPTextModelWithProjection},
        )
        for part in ("tokenizer", "tokenizer_2"):
            if getattr(pipeline, part, None) is None:
                problems.append(f"it has no {part}")
        if not problems and pipeline.unet.config.addition_embed_type != "text_time":
            problems.append("its UNet has no text_time conditioning")
        return problems

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return not cls.problems(pipeline)

    def _encoders(self) -> list[tuple[Any, Any]]:
        p = self.pipeline
        return [(p.tokenizer, p.text_encoder), (p.tokenizer_2, p.text_encoder_2)]

    def encode(self, ids: tuple[Any, ...], inputs_embeds: tuple[Any, ...] | None = None
               ) -> Conditioning:
        import torch

        hidden, pooled = [], None
        for index, encoder in enumerate(self.text_encoders):
            embeds = inputs_embeds[index] if inputs_embeds else None
            with self._input_embeddings(encoder, embeds):
                out = encoder(ids[index].to(encoder.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the projected encoder's text_embeds
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        dtype = self.pipeline.text_encoder_2.dtype
        return Conditioning(torch.cat(hidden, dim=-1).to(dtype=dtype), pooled)

    def unconditional(self, negative_prompt: str | None, batch: int = 1) -> Conditioning:
        import torch

        if negative_prompt is None and self.pipeline.config.force_zeros_for_empty_prompt:
            shape = self.encode_prompts([""])
            return Conditioning(torch.zeros_like(shape.hidden).expand(batch, -1, -1),
                                torch.zeros_like(shape.pooled).expand(batch, -1))
        return self.encode_prompts([negative_prompt or ""] * batch)

    def time_ids(self, latents: Any, dtype: Any) -> Any:
        """(h, w, 0, 0, h, w) per row, h x w the image size of ``latents``."""
        import torch

        factor = self.vae_scale_factor
        height, width = int(latents.shape[-2]) * factor, int(latents.shape[-1]) * factor
        row = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)
        return row.to(latents.device).repeat(int(latents.shape[0]), 1)

    def unet_kwargs(self, cond: Conditioning, latents: Any) -> dict[str, Any]:
        return {
            "encoder_hidden_states": cond.hidden,
            "added_cond_kwargs": {
                "text_embeds": cond.pooled,
                "time_ids": self.time_ids(latents, cond.hidden.dtype),
            },
        }

    def pipeline_kwargs(self, cond: Conditioning, uncond: Conditioning | None = None
                        ) -> dict[str, Any]:
        kwargs = {"prompt_embeds": cond.hidden, "pooled_prompt_embeds": cond.pooled}
        if uncond is not None:
            kwargs.update(negative_prompt_embeds=uncond.hidden,
                          negative_pooled_prompt_embeds=uncond.pooled)
        return kwargs

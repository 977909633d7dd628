"""``MiniWorldPipeline``: the MiniWorld's text-to-image model as a diffusers pipeline.

Same parts and call as Stable Diffusion 1.x, without the VAE: a ``UNet2DConditionModel`` that
denoises 32 x 32 RGB *pixels* (``in_channels = out_channels = 3``, values in [-1, 1]),
cross-attending to the last hidden states of a frozen ``CLIPTextModel`` (the MiniWorld tiny
CLIP's text tower) read through a ``CLIPTokenizer``; a diffusers scheduler (DDIM for sampling);
classifier-free guidance with the empty prompt (or ``negative_prompt``) as the unconditional
branch. ``save_pretrained`` / ``from_pretrained`` write and read an ordinary pipeline folder
(``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).

Importing this module registers the class with ``igmu.generation`` so ``DiffusersGenerator``
loads such folders.
"""

import inspect
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from igmu.pipelines.load import PIPELINE_CLASSES


class MiniWorldPipeline(DiffusionPipeline):
    """Pixel-space text-to-image diffusion with StableDiffusionPipeline's call signature."""

    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components: list[str] = []

    # Real classes, not strings: diffusers reads these annotations to check loaded components.
    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )

    # -----------------------------------------------------------------------------------------
    # text

    def _max_length(self) -> int:
        limit = int(self.text_encoder.config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            return min(limit, tokenizer_limit)
        return limit

    def _encode(self, texts: list[str], device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self._max_length(),
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(device))[0]

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeddings, unconditional embeddings or None), each repeated
        ``num_images_per_prompt`` times, as StableDiffusionPipeline.encode_prompt."""
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("give `prompt` or `prompt_embeds`")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self._encode(prompts, device)
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.unet.dtype)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * batch
            else:
                negatives = list(negative_prompt)
                if len(negatives) != batch:
                    raise ValueError(
                        f"negative_prompt has {len(negatives)} entries but prompt has {batch}"
                    )
            negative_prompt_embeds = self._encode(negatives, device)
        negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=self.unet.dtype)
        negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(
            num_images_per_prompt, dim=0
        )
        return prompt_embeds, negative_prompt_embeds

    # -----------------------------------------------------------------------------------------
    # sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Any:
        """Generate images; the arguments mean what they mean for StableDiffusionPipeline.

        The default guidance (2.0) is the shipped model's best trade-off: its images follow the
        prompt best at 1.5-2 and degrade above 3 (pixel-space CFG over-amplifies).

        ``latents`` are the initial pixel-space noise ``(N, 3, height, width)``. ``output_type``:
        ``"pil"`` (list of PIL images), ``"np"`` (N x H x W x 3 float32 in [0, 1]) or ``"pt"``
        (N x 3 x H x W tensor in [0, 1]).
        """
        size = self.unet.config.sample_size
        default = size if isinstance(size, int) else size[0]
        height = int(height or default)
        width = int(width or default)
        if height % 4 or width % 4:
            raise ValueError(f"height and width must be multiples of 4, got {height}x{width}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be at least 1")
        device = self._execution_device
        cfg = guidance_scale > 1.0
        cond, uncond = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            cfg,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
        )
        batch = cond.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} images")
        shape = (batch, self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=cond.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        embeddings = torch.cat([uncond, cond]) if cfg else cond
        extra: dict[str, Any] = {}
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        if "eta" in step_params:
            extra["eta"] = eta
        if "generator" in step_params:
            extra["generator"] = generator
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, encoder_hidden_states=embeddings).sample
            if cfg:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise, t, latents, **extra).prev_sample
        images = (latents / 2 + 0.5).clamp(0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out: Any = images
        else:
            array = images.permute(0, 2, 3, 1).float().cpu().numpy()
            out = self.numpy_to_pil(array) if output_type == "pil" else array
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)


def to_uint8(images: Any) -> list[np.ndarray]:
    """A pipeline's ``.images`` (PIL list or float array in [0, 1]) as uint8 H x W x 3 arrays."""
    from igmu.generation.base import to_uint8_images

    return to_uint8_images(images)


PIPELINE_CLASSES.register(MiniWorldPipeline.__name__)(MiniWorldPipeline)

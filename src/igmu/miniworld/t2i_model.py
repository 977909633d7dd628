"""The MiniWorld text-to-image model's parts and folder: UNet, schedulers, text encoder, pipeline.

Stable Diffusion 1.x's parts in pixel space (no VAE):

- ``UNet2DConditionModel``: 32 x 32 x 3 in and out, blocks of 32 / 64 / 64 channels (32 x 32
  plain, cross-attention transformer blocks at 16 x 16 and 8 x 8, and the mid block), one ResNet
  per block, 4 attention heads, cross-attention to the tiny CLIP text encoder's last hidden states
  (width 128, 77 tokens), which stays frozen.
- ``DDPMScheduler`` (1000 steps, cosine ``squaredcos_cap_v2`` betas, v-prediction) for
  training; the pipeline samples with ``DDIMScheduler`` (same betas and prediction type,
  ``trailing`` spacing, x0 clipped to [-1, 1]).

A trained model is a ``MiniWorldPipeline`` folder plus ``igmu_t2i.json`` (settings, losses, wall
times, judge accuracies of generated images).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from igmu.miniworld.clip_train import load_clip

SCHEMA = "igmu.miniworld.t2i/1"
METADATA = "igmu_t2i.json"

UNET_ARCH: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "attention_head_dim": 4,  # diffusers' name for the number of heads in this class
    "norm_num_groups": 8,
}
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}
# What the UNet predicts. The cosine schedule ends at SNR 2e-9, where an epsilon prediction
# carries no information about the image (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), sqrt(a) = 5e-5):
# the shipped epsilon model left the background, decided in the first sampling steps, to the
# initial noise. v ("velocity", Salimans & Ho 2022) is -x0 at that step, so the caption can set
# it; the loss weighting that goes with it is in t2i_objective.snr_weights. See
# docs/design/miniworld.md for the measurements.
PREDICTION_TYPES = ("epsilon", "v_prediction")
DEFAULT_PREDICTION = "v_prediction"
SAMPLER: dict[str, Any] = {"timestep_spacing": "trailing", "set_alpha_to_one": True}
DEFAULT_STEPS = 25
# Measured on the shipped model (judges, 192 prompts): guidance 1.5-2 draws what is asked >= 94%
# per factor; 3 and above over-amplifies in pixel space (4: style 55%, 6: noise). See METADATA.
DEFAULT_GUIDANCE = 2.0


def default_t2i_dir() -> Path:
    """The MiniWorld text-to-image pipeline shipped with the package."""
    return Path(str(resources.files("igmu.miniworld").joinpath("weights", "t2i")))


def build_unet(cross_attention_dim: int, seed: int) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_ARCH, cross_attention_dim=cross_attention_dim)


def build_schedulers(prediction_type: str = DEFAULT_PREDICTION) -> tuple[Any, Any]:
    """(DDPMScheduler for training, DDIMScheduler for sampling), with the same betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    train = DDPMScheduler(**SCHEDULER, prediction_type=prediction_type)
    sample = DDIMScheduler(**SCHEDULER, **SAMPLER, prediction_type=prediction_type)
    return train, sample


def text_encoder_from_clip(clip: Any) -> Any:
    """A standalone CLIPTextModel holding the CLIP's text tower (what SD calls text_encoder)."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(clip.config.text_config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def make_pipeline(
    unet: Any, clip_dir: str | Path, prediction_type: str = DEFAULT_PREDICTION
) -> Any:
    from igmu.miniworld.pipeline import MiniWorldPipeline

    clip, tokenizer = load_clip(clip_dir)
    _, scheduler = build_schedulers(prediction_type)
    pipeline = MiniWorldPipeline(
        unet=unet.eval(),
        scheduler=scheduler,
        text_encoder=text_encoder_from_clip(clip),
        tokenizer=tokenizer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_pipeline(folder: str | Path | None = None) -> Any:
    """A ``MiniWorldPipeline`` (float32, CPU) from a folder; the shipped one by default."""
    import torch

    from igmu.miniworld.pipeline import MiniWorldPipeline

    folder = Path(folder) if folder is not None else default_t2i_dir()
    pipeline = MiniWorldPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def write_metadata(out: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` as the folder's ``igmu_t2i.json``."""
    (out / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

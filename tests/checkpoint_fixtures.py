"""Published checkpoint forms, made from tiny pipelines for tests.

diffusers converts CompVis (LDM) names to its own but ships no converter back, so the CompVis
forms are written here from the LDM layout (openaimodel.UNetModel, ldm AutoencoderKL); loading
them goes through diffusers' converters, so a mistake on either side shows as missing keys or
different images. Top-level names come from diffusers' own DIFFUSERS_TO_LDM_MAPPING.
"""

from __future__ import annotations

import re

import torch

RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                 ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                 ("conv_shortcut", "skip_connection"))


def unet_to_compvis(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's state dict in CompVis names
    (``model.diffusion_model.*``)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    config = unet.config
    per = config.layers_per_block
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    out = {}
    n_up = len(config.up_block_types)
    for key, value in unet.state_dict().items():
        if key in top:
            name = top[key]
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + b * (per + 1) + j
            if kind == "resnets":
                for new, old in RESNET_TO_LDM:
                    rest = rest.replace(new, old)
                name = f"input_blocks.{index}.0.{rest}"
            else:
                name = f"input_blocks.{index}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            name = f"input_blocks.{(int(m[1]) + 1) * (per + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
            kind, j, rest = m[1], int(m[2]), m[3]
            if kind == "resnets":
                for new, old in RESNET_TO_LDM:
                    rest = rest.replace(new, old)
                name = f"middle_block.{2 * j}.{rest}"
            else:
                name = f"middle_block.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * (per + 1) + j
            if kind == "resnets":
                for new, old in RESNET_TO_LDM:
                    rest = rest.replace(new, old)
                name = f"output_blocks.{index}.0.{rest}"
            else:
                name = f"output_blocks.{index}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            has_attention = "CrossAttn" in config.up_block_types[b]
            assert b < n_up - 1
            name = f"output_blocks.{b * (per + 1) + per}.{2 if has_attention else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no CompVis name for {key}")
        out[f"model.diffusion_model.{name}"] = value.clone()
    return out


def nin(name: str) -> str:
    return name.replace("conv_shortcut", "nin_shortcut")


def vae_to_compvis(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's state dict in CompVis names (``first_stage_model.*``), its
    attention projections as 1x1 convolutions as LDM stores them."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(vae.config.up_block_types)
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                 "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        value = value.clone()
        if key in top:
            name = top[key]
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{nin(m[3])}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)",
                           key):
            name = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{nin(m[3])}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            block = n_up - 1 - int(m[1])
            name = f"decoder.up.{block}.block.{m[2]}.{nin(m[3])}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            name = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        else:
            raise KeyError(f"no CompVis name for {key}")
        out[f"first_stage_model.{name}"] = value
    return out


def text_encoder_to_compvis(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's state dict as SD-1.x's LDM checkpoint holds it."""
    return {f"cond_stage_model.transformer.{k}": v.clone()
            for k, v in text_encoder.state_dict().items()}


def dyadic_(module: torch.nn.Module, seed: int, scale: float = 1 / 64) -> None:
    """Perturb every parameter by small multiples of a power of two (so sums stay exact)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            steps = torch.randint(-3, 4, param.shape, generator=generator).to(param.dtype)
            param.add_(steps * scale)


def dyadic_tensor(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Entries k/8, k in [-4, 4]: products and short sums of them are exact in float32."""
    return torch.randint(-4, 5, shape, generator=generator).float() / 8

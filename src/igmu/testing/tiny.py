"""Tiny random models of every architecture IGMU uses, for offline smoke runs and tests (and
``igmu models make-tiny``): a testing module, above the model layer it builds for.

Scores from these models mean nothing about real images; they exercise the real code paths.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from igmu.backbones.tokenizer import write_char_tokenizer_files
from igmu.detectors.clip_head import KNOWN_HEADS, build_head

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def make_tiny_clip(folder: Path, seed: int = 0, projection_dim: int = 512) -> None:
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_char_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        # A random CLIP's image/text cosines centre on 0, so half its CLIP scores clip to 0.
        # A shared component in both towers spreads them over (0, 1) like a trained CLIP's.
        model.text_projection.weight.copy_(model.visual_projection.weight)
        shared = torch.randn(config.vision_config.hidden_size) * 0.8
        model.vision_model.post_layernorm.bias.copy_(shared)
        model.text_model.final_layer_norm.bias.copy_(shared)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        do_center_crop=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))


def make_tiny_heads(folder: Path, seed: int = 0) -> dict[str, str]:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for offset, name in enumerate(KNOWN_HEADS):
        torch.manual_seed(seed + offset)
        head = build_head(512)
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
        paths[name] = str(path)
    return paths


def make_random_alexnet_features(path: Path, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file
    from torch import nn

    # torchvision's AlexNet `features` layout (the part LPIPS uses), randomly initialised.
    torch.manual_seed(seed)
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )
    state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    save_file(state, str(path))


def make_random_clip_b32(folder: Path, seed: int = 0) -> int:
    """CLIP ViT-B/32 at its real size (transformers' CLIPConfig() defaults) with random weights
    and the character tokenizer, saved loadable; returns the parameter count."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_char_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
    )
    vision = config.vision_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (224, 32, 768)
    assert config.projection_dim == 512 and config.text_config.hidden_size == 512
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        do_center_crop=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def make_random_inception(path: Path, seed: int) -> int:
    """A random state dict for torch-fidelity's FID Inception-v3 (full size, saved as
    safetensors); returns the parameter count.

    The class always loads weights in __init__; a subclass that ignores an empty state dict keeps
    the random initialisation, which we then save.
    """
    import torch
    from safetensors.torch import save_file
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            if not state_dict:
                return None  # keep the random initialisation
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        torch.manual_seed(seed)
        net = _RandomInception("inception-v3-compat", ["2048"], str(empty))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return sum(v.numel() for v in state.values())


def make_tiny(folder: Path, igmu_heads: Path | None = None, seed: int = 0) -> Path:
    """Write tiny models plus ``models.yaml`` pointing at them; returns the models file path."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_clip(folder / "clip", seed)
    if igmu_heads is not None:
        heads = {}
        for name in KNOWN_HEADS:
            candidate = igmu_heads.resolve() / f"{name}.pth"
            if candidate.is_file():
                heads[name] = str(candidate)
    else:
        heads = make_tiny_heads(folder / "heads", seed)
    make_random_alexnet_features(folder / "alexnet_features.safetensors", seed)
    models = {
        "clip_detector": str(folder / "clip"),
        "clip_score": str(folder / "clip"),
        "fid": {"kind": "clip", "model": str(folder / "clip")},
        "lpips": {"net": "alex", "backbone_weights": str(folder / "alexnet_features.safetensors")},
        "heads": heads,
        "person": {"kind": "hog"},
    }
    try:  # a tiny SD pipeline for `igmu generate` / `igmu unlearn` smoke runs
        pipeline = make_tiny_sd_pipeline(seed=seed, tokenizer_dir=folder / "sd_tokenizer_files")
        pipeline.save_pretrained(str(folder / "sd"), safe_serialization=True)
        models["generator"] = {
            "model": str(folder / "sd"),
            "steps": 4,
            "guidance": 7.5,
            "height": 32,
            "width": 32,
        }
    except ImportError:  # diffusers is the optional `generate` extra
        pass
    path = folder / "models.yaml"
    header = (
        "# Tiny RANDOM models written by `igmu models make-tiny`: for smoke runs and tests only.\n"
        "# Their scores say nothing about real images. Replace each entry with real weights.\n"
    )
    path.write_text(header + yaml.safe_dump(models, sort_keys=False), encoding="utf-8")
    return path


def _tiny_tokenizer(tokenizer_dir: Path | None, max_length: int | None, **extra_kwargs):
    """The character-level CLIP tokenizer (and its vocabulary size), written to ``tokenizer_dir``
    or a temporary folder."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = tokenizer_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = write_char_tokenizer_files(folder)
        extra = {} if max_length is None else {"model_max_length": max_length}
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), **extra, **extra_kwargs)
    return tokenizer, vocab


def _tiny_text_config(vocab: int, hidden: int, layers: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        **extra,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=32,
    )


def make_tiny_sd_pipeline(
    cross_dim: int = 32,
    max_length: int | None = 77,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
):
    """A StableDiffusionPipeline of tiny random parts (diffusers' get_dummy_components layout):
    the same classes as SD-1.x, for generation and unlearning smoke runs and tests."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer, vocab = _tiny_tokenizer(tokenizer_dir, max_length)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim,
        norm_num_groups=32,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(
        _tiny_text_config(vocab, cross_dim, 2 if cross_dim <= 64 else 1)
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_sdxl_pipeline(seed: int = 0, tokenizer_dir: Path | None = None):
    """A StableDiffusionXLPipeline of tiny random parts with SDXL's structure: two CLIP text
    encoders (32 + 32 = 64-d cross-attention context; the second one projected, giving the pooled
    embedding), a UNet with ``text_time`` added conditioning (6 size ids x 8 + 32 pooled = 80),
    linear projections, two transformer layers in the lower block, and the second tokenizer
    padding with "!" as SDXL's does."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab = _tiny_tokenizer(tokenizer_dir, 77)
    tokenizer_2, _ = _tiny_tokenizer(tokenizer_dir, 77, pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_tiny_text_config(vocab, 32, 2))
    text_encoder_2 = CLIPTextModelWithProjection(
        _tiny_text_config(vocab, 32, 2, projection_dim=32)
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )

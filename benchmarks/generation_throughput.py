"""Images/s of `igmu generate` against a plain diffusers pipeline loop, same batches and steps.

Models (offline, nothing downloaded):

* ``miniworld``: the shipped MiniWorld text-to-image model (32 px, 8 DDIM steps, guidance 2).
* ``sd``: a full-size Stable Diffusion 1.x (UNet 860M parameters, VAE, CLIP ViT-L text encoder)
  built from diffusers' SD-1.x configuration with random weights (a character tokenizer), at
  512 px and a few steps.

Both sides generate the same images: the task's jobs in key order, cut into batches of
``--batch-size``, one CPU ``torch.Generator`` per image seeded with its seed.

* plain: ``pipe(prompt=batch, generator=[...], output_type="np")`` in a loop, images kept in
  memory (nothing written);
* igmu: ``igmu.generation.engine.generate`` (what ``igmu generate`` runs): cache keys, PNGs written
  atomically into the content-addressed cache, manifest. The pipeline is built once and handed to
  the engine through its factory; model loading and fingerprinting (hashing every weight) are
  timed apart as ``load_s``, since the plain loop loads nothing either.

Each side gets one warm-up batch; the timed region is the whole job list. ``--repeats`` runs
alternate the two sides; the median is reported. The script checks that both sides made the same
pixels. It prints the machine (CPU, GPU, threads, load average) and the figures, and writes them
as JSON with ``--json``.

Run: python benchmarks/generation_throughput.py --model miniworld
     python benchmarks/generation_throughput.py --model sd --steps 2 --images 4 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def machine(device: str) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sd_pipeline(device: str, dtype: str, seed: int = 0) -> Any:
    """Stable Diffusion 1.x at full size with random weights, built from diffusers' SD-1.x
    configuration (UNet2DConditionModel's defaults are SD's blocks; 768-d CLIP ViT-L/14 text)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from igmu.backbones.tokenizer import write_char_tokenizer_files

    folder = Path(tempfile.mkdtemp(prefix="sd_tok_"))
    vocab = write_char_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the GPU when there is one (fast)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab - 2,
            eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        ))
        # random init spreads activations wide; shrink so fp16 stays finite
        with torch.no_grad():
            for p in unet.parameters():
                p.mul_(0.5)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    from igmu.pipelines.load import torch_dtype

    return pipe.to(device, dtype=torch_dtype(dtype))


def miniworld_pipeline(device: str, dtype: str) -> Any:
    from igmu.miniworld.shipped import shipped_models
    from igmu.pipelines.load import load_pipeline

    t2i, _ = shipped_models()
    return load_pipeline(str(t2i), str(t2i), "generator.model", dtype=dtype).to(device)


def plain_loop(pipe: Any, jobs: list[Any], batch: int, settings: Any) -> list[np.ndarray]:
    import torch

    from igmu.generation.base import to_uint8_images

    images: list[np.ndarray] = []
    for start in range(0, len(jobs), batch):
        part = jobs[start : start + batch]
        out = pipe(prompt=[j.prompt for j in part],
                   generator=[torch.Generator().manual_seed(j.seed) for j in part],
                   num_inference_steps=settings.num_inference_steps,
                   guidance_scale=settings.guidance_scale, height=settings.height,
                   width=settings.width, output_type="np")
        images += to_uint8_images(out.images)  # as a user would to look at them
    return images


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("miniworld", "sd"), default="miniworld")
    parser.add_argument("--images", type=int, default=None, help="images per side")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch
    import yaml

    from igmu.backbones.config import load_models_config
    from igmu.generation import GenerateOptions, generate
    from igmu.generation.diffusers_backend import DiffusersGenerator
    from igmu.generation.plan import SettingOverrides, base_settings, plan_jobs
    from igmu.tasks import load_task

    if args.threads:
        torch.set_num_threads(args.threads)
    mini = args.model == "miniworld"
    defaults = {"images": 256, "batch": 32, "steps": 8, "size": 32} if mini else {
        "images": 8, "batch": 4, "steps": 4, "size": 512}
    images = args.images or defaults["images"]
    batch = args.batch_size or defaults["batch"]
    steps, size = args.steps or defaults["steps"], args.size or defaults["size"]
    task = load_task("mini_object" if mini else "church")

    started = time.perf_counter()
    pipe = miniworld_pipeline(args.device, args.dtype) if mini else sd_pipeline(args.device,
                                                                               args.dtype)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - started

    work = Path(tempfile.mkdtemp(prefix="igmu_throughput_"))
    models_file = work / "models.yaml"
    models_file.write_text(yaml.safe_dump({"generator": {
        "model": str(work), "steps": steps, "guidance": 2.0 if mini else 7.5,
        "height": size, "width": size}}))
    models = load_models_config(models_file)
    settings = base_settings(models, SettingOverrides())
    # the forget prompts: K per class, ceil(N / K) seeds each (as `igmu generate
    # --prompt-sets forget --max-prompts-per-class K --images-per-prompt M`)
    available = len(task.prompt_set("forget").classes[0][1])
    per_class = min(available, images)
    per_prompt = -(-images // per_class)
    options = GenerateOptions(methods=["ORG"], images_per_prompt=per_prompt, batch_size=batch,
                              prompt_sets=["forget"], max_prompts_per_class=per_class,
                              progress=False, device=args.device, dtype=args.dtype)
    jobs = plan_jobs(task, "ORG", ["forget"], per_prompt, per_class)
    n = len(jobs)
    warm = jobs[:batch]
    loads: list[float] = []

    def factory(source: Any, field: str) -> Any:
        t0 = time.perf_counter()
        generator = DiffusersGenerator(pipe, "benchmark", args.device, batch)
        generator.generate([j.prompt for j in warm], [j.seed for j in warm], settings)
        loads.append(time.perf_counter() - t0)
        return generator

    plain_s, igmu_s, load_s = [], [], []
    reference = None
    plain_loop(pipe, warm, batch, settings)  # warm-up
    for repeat in range(args.repeats):
        t0 = time.perf_counter()
        reference = plain_loop(pipe, jobs, batch, settings)
        plain_s.append(time.perf_counter() - t0)
        out = work / f"igmu_{repeat}"
        t0 = time.perf_counter()
        result = generate(task, out, models, options, factory=factory)
        igmu_s.append(time.perf_counter() - t0 - loads[-1])
        load_s.append(loads[-1])
        assert result.generated == n, (result.generated, n)
    rows = {(r["prompt"], r["seed"]): r for r in result.rows}
    from PIL import Image

    same = all(
        np.array_equal(np.asarray(Image.open(out / rows[(j.prompt, j.seed)]["path"])), image)
        for j, image in zip(jobs, reference, strict=True)
    )
    plain_med, igmu_med = statistics.median(plain_s), statistics.median(igmu_s)
    figures = {
        "model": args.model, "images": n, "batch_size": batch, "steps": steps, "size": size,
        "device": args.device, "dtype": args.dtype, "build_s": round(build_s, 2),
        "plain_images_per_s": round(n / plain_med, 3),
        "igmu_images_per_s": round(n / igmu_med, 3),
        "igmu_over_plain": round(plain_med / igmu_med, 4),
        "igmu_load_and_fingerprint_s": round(statistics.median(load_s), 3),
        "plain_s": [round(v, 3) for v in plain_s], "igmu_s": [round(v, 3) for v in igmu_s],
        "identical_pixels": bool(same), "machine": machine(args.device),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

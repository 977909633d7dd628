"""Train the MiniWorld's models: the tiny CLIP, then the tiny text-to-image diffusion model.

The text-to-image model is Stable Diffusion 1.x's recipe in pixel space (no VAE):

- ``UNet2DConditionModel``: 32 x 32 x 3 in and out, blocks of 32 / 64 / 64 channels (32 x 32
  plain, cross-attention transformer blocks at 16 x 16 and 8 x 8, and the mid block), one ResNet
  per block, 4 attention heads, cross-attention to the tiny CLIP text encoder's last hidden states
  (width 128, 77 tokens), which stays frozen.
- ``DDPMScheduler`` (1000 steps, cosine ``squaredcos_cap_v2`` betas, epsilon prediction) for
  training; the shipped pipeline samples with ``DDIMScheduler`` (same betas, ``trailing``
  spacing, x0 clipped to [-1, 1]).
- Loss: epsilon MSE with min-SNR-gamma weighting (gamma 5, Hang et al. 2023).
- Captions: ``caption_mix`` (English, paraphrases, de/fr/es/it/zh), replaced by the empty
  caption 10% of the time so classifier-free guidance works.
- AdamW, linear warm-up then cosine decay, gradient clipping 1, an exponential moving average of
  the weights (what is shipped), bfloat16 autocast where the CPU supports it natively.

``train(out_dir, ...)`` writes ``out_dir/clip`` (tiny CLIP, see ``clip_train``),
``out_dir/t2i`` (a ``MiniWorldPipeline`` folder, rewritten at every checkpoint, so an interrupted
run still leaves the latest one), ``out_dir/checkpoints/step-NNNNNN`` (EMA UNets) and
``out_dir/t2i/igmu_t2i.json`` (settings, losses, wall times, judge accuracies of generated
images). ``--short`` is the CI schedule (seconds; the loss must fall and the artifacts load).

Command line (``igmu miniworld train`` wraps ``main``)::

    python -m igmu.miniworld.train_t2i --out DIR [--steps N] [--clip-steps N] [--seed S]
        [--short] [--clip DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from igmu.miniworld.captions import Wording, describe
from igmu.miniworld.clip_train import (
    ClipTrainConfig,
    ScenePool,
    load_clip,
    lr_at,
    tokenize,
    torch_threads,
    train_clip,
)
from igmu.miniworld.world import sample_scene

SCHEMA = "igmu.miniworld.t2i/1"
METADATA = "igmu_t2i.json"
JUDGED_FACTORS = ("shape", "colour", "style", "attribute")
JUDGE_EVAL_SEED = 424_242  # prompts and noise of the judge evaluation

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
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}
SAMPLER: dict[str, Any] = {"timestep_spacing": "trailing", "set_alpha_to_one": True}
DEFAULT_STEPS = 25
# Measured on the shipped model (judges, 192 prompts): guidance 1.5-2 draws what is asked >= 94%
# per factor; 3 and above over-amplifies in pixel space (4: style 55%, 6: noise). See METADATA.
DEFAULT_GUIDANCE = 2.0


@dataclass(frozen=True)
class T2IConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup: int = 200
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0
    ema_decay: float = 0.995
    pool_size: int = 16384
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 500
    bf16: bool | None = None  # None: bfloat16 autocast when the CPU has native bfloat16
    probe_size: int = 64
    eval_images: int = 192  # judge evaluation at the end (0: none)
    eval_guidance: tuple[float, ...] = (1.5, 2.0, 3.0)
    eval_steps: int = DEFAULT_STEPS
    # "cuda" trains on a GPU: the same seeded draws (made on the CPU), not the same bits.
    device: str = "cpu"


# The CI schedule runs on one thread: on shared cores a 2-thread pool fighting other processes
# is several times slower than one thread.
SHORT_CLIP = ClipTrainConfig(
    steps=8, batch_size=32, pool_size=256, eval_images=32, warmup=2, threads=1
)
SHORT_T2I = T2IConfig(
    steps=30,
    batch_size=8,
    lr=1e-3,
    warmup=3,
    pool_size=256,
    threads=1,
    checkpoint_every=0,
    bf16=False,
    probe_size=16,
    eval_images=0,
)


def default_t2i_dir() -> Path:
    """The MiniWorld text-to-image pipeline shipped with the package."""
    return Path(str(resources.files("igmu.miniworld").joinpath("weights", "t2i")))


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build_unet(cross_attention_dim: int, seed: int) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_ARCH, cross_attention_dim=cross_attention_dim)


def build_schedulers() -> tuple[Any, Any]:
    """(DDPMScheduler for training, DDIMScheduler for sampling), with the same betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(**SCHEDULER)
    sample = DDIMScheduler(**SCHEDULER, **SAMPLER)
    return train, sample


def text_encoder_from_clip(clip: Any) -> Any:
    """A standalone CLIPTextModel holding the CLIP's text tower (what SD calls text_encoder)."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(clip.config.text_config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def make_pipeline(unet: Any, clip_dir: str | Path) -> Any:
    from igmu.miniworld.pipeline import MiniWorldPipeline

    clip, tokenizer = load_clip(clip_dir)
    _, scheduler = build_schedulers()
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


class _Ema:
    def __init__(self, module: Any, decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in module.parameters()]

    def update(self, module: Any, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for s, p in zip(self.shadow, module.parameters(), strict=True):
                s.lerp_(p.detach(), 1 - decay)

    def copy_to(self, module: Any) -> Any:
        import torch

        with torch.no_grad():
            for s, p in zip(self.shadow, module.parameters(), strict=True):
                p.copy_(s)
        return module


def _snr_weights(alphas_cumprod: Any, t: Any, gamma: float) -> Any:
    """min(SNR, gamma) / SNR: the min-SNR-gamma weight of the epsilon loss."""
    alpha = alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    return snr.clamp(max=gamma) / snr


class _Batcher:
    """Seeded draws of (x0, captions) from a render pool, text states from the frozen encoder."""

    def __init__(
        self, pool: ScenePool, tokenizer: Any, encoder: Any, uncond: float, device: Any
    ) -> None:
        import torch

        self.device = device
        self.pool = pool
        self.pixels = torch.from_numpy(pool.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.uncond = uncond

    def draw(self, rng: np.random.Generator, size: int) -> tuple[Any, Any]:
        import torch

        index = rng.integers(0, len(self.pool), size=size)
        from igmu.miniworld.captions import caption_mix

        captions = [caption_mix(self.pool.scenes[i], rng) for i in index]
        drop = rng.random(size) < self.uncond
        captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        with torch.no_grad():
            states = self.encoder(tokenize(self.tokenizer, captions).to(self.device))[0]
        return self.pixels[torch.from_numpy(index)].to(self.device), states


def _diffusion_loss(
    torch: Any,
    unet: Any,
    scheduler: Any,
    x0: Any,
    states: Any,
    t: Any,
    noise: Any,
    gamma: float,
    bf16: bool,
) -> Any:
    noisy = scheduler.add_noise(x0, noise, t)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        prediction = unet(noisy, t, encoder_hidden_states=states).sample
    per_sample = ((prediction.float() - noise) ** 2).mean(dim=(1, 2, 3))
    weights = _snr_weights(scheduler.alphas_cumprod, t, gamma)
    return (per_sample * weights).mean()


def train_t2i(
    out_dir: str | Path,
    clip_dir: str | Path,
    config: T2IConfig | None = None,
    log: Callable[[str], None] = print,
    checkpoints_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train the UNet against the frozen CLIP text encoder of ``clip_dir``; write the pipeline
    folder ``out_dir`` (EMA weights) and its ``igmu_t2i.json``."""
    config = config or T2IConfig()
    with torch_threads(config.threads):
        return _train_t2i(Path(out_dir), Path(clip_dir), config, log, checkpoints_dir)


def _train_t2i(
    out: Path,
    clip_dir: Path,
    config: T2IConfig,
    log: Callable[[str], None],
    checkpoints_dir: str | Path | None,
) -> dict[str, Any]:
    import torch

    device = torch.device(config.device)
    on_cpu = device.type == "cpu"
    bf16 = (native_bf16() and on_cpu) if config.bf16 is None else bool(config.bf16)
    start = time.time()
    clip, tokenizer = load_clip(clip_dir)
    encoder = text_encoder_from_clip(clip).to(device)
    del clip
    unet = build_unet(encoder.config.hidden_size, config.seed).to(device)
    params = sum(p.numel() for p in unet.parameters())
    log(f"[t2i] UNet {params / 1e6:.2f}M parameters; bf16 autocast: {bf16}")
    scheduler, _ = build_schedulers()
    pool = ScenePool(config.pool_size, config.seed + 10)
    batcher = _Batcher(pool, tokenizer, encoder, config.uncond_prob, device)
    rng = np.random.default_rng(config.seed + 11)
    generator = torch.Generator().manual_seed(config.seed + 12)
    steps_total = scheduler.config.num_train_timesteps

    # A fixed probe batch: the loss on it before and after training says whether it learned.
    probe_rng = np.random.default_rng(config.seed + 13)
    probe_gen = torch.Generator().manual_seed(config.seed + 14)
    probe_x0, probe_states = batcher.draw(probe_rng, config.probe_size)
    probe_t = torch.randint(0, steps_total, (config.probe_size,), generator=probe_gen).to(device)
    probe_noise = torch.randn(probe_x0.shape, generator=probe_gen).to(device)

    def probe_loss(model: Any) -> float:
        with torch.no_grad():
            return float(
                _diffusion_loss(
                    torch,
                    model,
                    scheduler,
                    probe_x0,
                    probe_states,
                    probe_t,
                    probe_noise,
                    config.snr_gamma,
                    False,
                )
            )

    probe_before = probe_loss(unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = _Ema(unet, config.ema_decay)
    losses: list[float] = []
    checkpoints: list[dict[str, Any]] = []
    train_start = time.time()
    unet.train()

    def save(step: int) -> None:
        ema_unet = ema.copy_to(copy.deepcopy(unet)).eval().to("cpu")
        pipeline = make_pipeline(ema_unet, clip_dir)
        _write_pipeline(pipeline, out)
        entry = {
            "step": step,
            "seconds": round(time.time() - train_start, 1),
            "loss_last100": float(np.mean(losses[-100:])) if losses else None,
        }
        if checkpoints_dir is not None:
            folder = Path(checkpoints_dir) / f"step-{step:06d}"
            ema_unet.save_pretrained(str(folder), safe_serialization=True)
            entry["unet"] = str(folder)
        checkpoints.append(entry)
        _write_metadata(out, _metadata(config, bf16, params, losses, checkpoints, {}))
        log(f"[t2i] checkpoint at step {step} -> {out}")

    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        x0, states = batcher.draw(rng, config.batch_size)
        t = torch.randint(0, steps_total, (config.batch_size,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        loss = _diffusion_loss(torch, unet, scheduler, x0, states, t, noise, config.snr_gamma, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.update(unet, step)
        losses.append(float(loss.item()))
        if step % 50 == 0 or step == config.steps - 1:
            log(
                f"[t2i] step {step + 1}/{config.steps} loss {np.mean(losses[-50:]):.4f} "
                f"({time.time() - train_start:.0f}s)"
            )
        done = step + 1
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            save(done)
    train_seconds = time.time() - train_start
    unet.eval()
    probe_after = probe_loss(unet)
    ema_unet = ema.copy_to(copy.deepcopy(unet)).eval()
    probe_after_ema = probe_loss(ema_unet)
    pipeline = make_pipeline(ema_unet.to("cpu"), clip_dir)
    _write_pipeline(pipeline, out)
    result = {
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(1, config.steps), 3),
        "probe_loss_before": probe_before,
        "probe_loss_after": probe_after,
        "probe_loss_after_ema": probe_after_ema,
    }
    log(
        f"[t2i] trained in {train_seconds:.0f}s; probe loss {probe_before:.4f} -> "
        f"{probe_after:.4f} (EMA {probe_after_ema:.4f})"
    )
    if config.eval_images:
        reloaded = load_pipeline(out).to(device)
        result["judges"] = {}
        for guidance in config.eval_guidance:
            eval_start = time.time()
            report = judge_accuracy(
                reloaded,
                n=config.eval_images,
                guidance_scale=guidance,
                num_inference_steps=config.eval_steps,
            )
            report["seconds"] = round(time.time() - eval_start, 1)
            result["judges"][f"guidance_{guidance:g}"] = report
            log(f"[t2i] judges, guidance {guidance:g}: {json.dumps(report['accuracy'])}")
    result["total_seconds"] = round(time.time() - start, 1)
    metadata = _metadata(config, bf16, params, losses, checkpoints, result)
    _write_metadata(out, metadata)
    return metadata


def _metadata(
    config: T2IConfig,
    bf16: bool,
    params: int,
    losses: list[float],
    checkpoints: list[dict[str, Any]],
    result: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "unet": {**UNET_ARCH, "parameters": params},
        "scheduler_train": {"class": "DDPMScheduler", **SCHEDULER},
        "scheduler_sample": {"class": "DDIMScheduler", **SCHEDULER, **SAMPLER},
        "sampling_defaults": {
            "num_inference_steps": DEFAULT_STEPS,
            "guidance_scale": DEFAULT_GUIDANCE,
        },
        "train": {**asdict(config), "bf16": bf16, "loss": "epsilon MSE, min-SNR-gamma"},
        "steps_done": len(losses),
        "losses_every_50": [float(f"{v:.5g}") for v in _means(losses, 50)],
        "checkpoints": checkpoints,
        **result,
    }


def _means(values: list[float], width: int) -> list[float]:
    return [float(np.mean(values[i : i + width])) for i in range(0, len(values), width)]


def _write_pipeline(pipeline: Any, out: Path) -> None:
    """Write the pipeline into ``out`` via a sibling staging folder (never half-written)."""
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    pipeline.save_pretrained(str(staging), safe_serialization=True)
    if out.exists():
        metadata = out / METADATA
        if metadata.is_file():
            shutil.copy2(metadata, staging / METADATA)
        shutil.rmtree(out)
    staging.rename(out)


def _write_metadata(out: Path, metadata: dict[str, Any]) -> None:
    (out / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# judging generated images


def judge_prompts(n: int, seed: int = JUDGE_EVAL_SEED) -> list[tuple[str, dict[str, str]]]:
    """``n`` English prompts with their labels, balanced over shapes and colours: "a red
    circle", "a blue cross with stripes", "a dotted green square with a white spot" ..."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        scene = sample_scene(
            rng,
            shape=("circle", "square", "triangle", "cross")[i % 4],
            colour=("red", "green", "blue", "yellow")[(i // 4) % 4],
        )
        wording = Wording(style_form="adj" if rng.random() < 0.5 else "with", background_form=None)
        labels = scene.labels()
        prompts.append((describe(scene, "en", wording), {f: labels[f] for f in JUDGED_FACTORS}))
    return prompts


def generate(
    pipeline: Any,
    prompts: list[str],
    seeds: list[int],
    guidance_scale: float = DEFAULT_GUIDANCE,
    num_inference_steps: int = DEFAULT_STEPS,
    batch: int = 32,
) -> list[np.ndarray]:
    """uint8 images, one CPU generator per image (so an image depends on its seed alone)."""
    import torch

    from igmu.generation.base import to_uint8_images

    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch]]
        out = pipeline(
            prompt=chunk,
            generator=generators,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            output_type="np",
        )
        images += to_uint8_images(out.images)
    return images


def judge_accuracy(
    pipeline: Any,
    n: int = 192,
    guidance_scale: float = DEFAULT_GUIDANCE,
    num_inference_steps: int = DEFAULT_STEPS,
    judge: Any = None,
    seed: int = JUDGE_EVAL_SEED,
) -> dict[str, Any]:
    """Generate ``n`` images for ``judge_prompts`` and score them with the MiniWorld judges:
    per factor, the share of images the judge reads as the requested value; ``all``: every
    factor right. Also per requested value."""
    from igmu.miniworld.judges import Judge, default_judge_dir

    judge = judge or Judge(default_judge_dir())
    items = judge_prompts(n, seed)
    prompts = [p for p, _ in items]
    images = generate(
        pipeline, prompts, [seed + i for i in range(n)], guidance_scale, num_inference_steps
    )
    predicted = judge.predict(images)
    correct = {
        f: np.asarray([predicted[f][i] == items[i][1][f] for i in range(n)]) for f in JUDGED_FACTORS
    }
    accuracy = {f: float(c.mean()) for f, c in correct.items()}
    accuracy["all"] = float(np.mean(np.all([correct[f] for f in JUDGED_FACTORS], axis=0)))
    by_value: dict[str, dict[str, float]] = {}
    for f in JUDGED_FACTORS:
        values = sorted({labels[f] for _, labels in items})
        by_value[f] = {
            v: float(np.mean([correct[f][i] for i in range(n) if items[i][1][f] == v]))
            for v in values
        }
    return {
        "n": n,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "accuracy": accuracy,
        "by_value": by_value,
        "judge": getattr(judge, "fingerprint", None),
    }


def evaluate_folder(
    folder: str | Path,
    guidance_scales: tuple[float, ...] = (1.5, 2.0, 3.0),
    num_inference_steps: int = DEFAULT_STEPS,
    n: int = 192,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Judge a pipeline folder at several guidance scales; merge into its ``igmu_t2i.json``
    (``judges``, keyed ``guidance_<g>`` at the default steps, ``guidance_<g>_steps_<s>``
    otherwise)."""
    folder = Path(folder)
    pipeline = load_pipeline(folder)
    path = folder / METADATA
    metadata = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    judges = metadata.setdefault("judges", {})
    for guidance in guidance_scales:
        started = time.time()
        report = judge_accuracy(
            pipeline, n=n, guidance_scale=guidance, num_inference_steps=num_inference_steps
        )
        report["seconds"] = round(time.time() - started, 1)
        key = f"guidance_{guidance:g}"
        if num_inference_steps != DEFAULT_STEPS:
            key += f"_steps_{num_inference_steps}"
        judges[key] = report
        log(f"[t2i] judges, {key}: {json.dumps(report['accuracy'])}")
    _write_metadata(folder, metadata)
    return metadata


# ---------------------------------------------------------------------------------------------
# both models


def train(
    out_dir: str | Path,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    clip_steps: int | None = None,
    short: bool = False,
    clip_dir: str | Path | None = None,
    eval_images: int | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the tiny CLIP (unless ``clip_dir`` gives a trained one), then the text-to-image
    model. Writes ``out_dir/clip``, ``out_dir/t2i`` and ``out_dir/checkpoints``. ``short``: the
    CI schedule. Returns the text-to-image metadata plus ``clip`` (the CLIP's metadata or None).
    ``device``: where both train (``cuda``: same seeded draws, different bits).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip_config = SHORT_CLIP if short else ClipTrainConfig()
    t2i_config = SHORT_T2I if short else T2IConfig()
    clip_config = replace(clip_config, seed=seed, device=device)
    t2i_config = replace(t2i_config, seed=seed, device=device)
    if clip_steps is not None:
        clip_config = replace(clip_config, steps=clip_steps)
    if steps is not None:
        t2i_config = replace(t2i_config, steps=steps)
    if batch_size is not None:
        t2i_config = replace(t2i_config, batch_size=batch_size)
    if eval_images is not None:
        t2i_config = replace(t2i_config, eval_images=eval_images)
    clip_metadata = None
    if clip_dir is None:
        clip_dir = out / "clip"
        clip_metadata = train_clip(clip_dir, clip_config, log)
    metadata = train_t2i(out / "t2i", clip_dir, t2i_config, log, out / "checkpoints")
    return {**metadata, "clip": clip_metadata}


def _checked_device(parser: argparse.ArgumentParser, device: str) -> str:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: this torch build sees no CUDA GPU")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="igmu miniworld train",
        description="Train the MiniWorld tiny CLIP and text-to-image model.",
    )
    parser.add_argument("--out", help="output folder: clip/, t2i/, checkpoints/")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"text-to-image steps (default {T2IConfig.steps}; short {SHORT_T2I.steps})",
    )
    parser.add_argument(
        "--clip-steps",
        type=int,
        default=None,
        help=f"CLIP steps (default {ClipTrainConfig.steps}; short {SHORT_CLIP.steps})",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="text-to-image batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="cpu (default; bit-reproducible) or cuda[:N]"
    )
    parser.add_argument("--short", action="store_true", help="the CI schedule (seconds)")
    parser.add_argument("--clip", default=None, help="use this trained CLIP folder (no CLIP run)")
    parser.add_argument(
        "--eval-images",
        type=int,
        default=None,
        help="images per guidance scale for the final judge evaluation",
    )
    parser.add_argument(
        "--evaluate",
        metavar="DIR",
        default=None,
        help="only judge the pipeline folder DIR (no training)",
    )
    parser.add_argument(
        "--guidance", default="1.5,2,3", help="with --evaluate: comma-separated guidance scales"
    )
    parser.add_argument(
        "--sample-steps", type=int, default=DEFAULT_STEPS, help="with --evaluate: sampling steps"
    )
    args = parser.parse_args(argv)
    started = time.time()

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    if args.evaluate:
        scales = tuple(float(g) for g in args.guidance.split(",") if g.strip())
        evaluate_folder(args.evaluate, scales, args.sample_steps, args.eval_images or 192, log)
        return 0
    if not args.out:
        parser.error("--out is required (unless --evaluate)")

    metadata = train(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        clip_steps=args.clip_steps,
        short=args.short,
        clip_dir=args.clip,
        eval_images=args.eval_images,
        log=log,
        device=_checked_device(parser, args.device),
    )
    log(
        f"done in {time.time() - started:.0f}s; probe loss "
        f"{metadata['probe_loss_before']:.4f} -> {metadata['probe_loss_after_ema']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

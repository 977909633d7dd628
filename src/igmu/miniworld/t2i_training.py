"""Training the MiniWorld text-to-image model: Stable Diffusion 1.x's recipe in pixel space.

- Loss: v-prediction MSE weighted so the x0 error counts min(SNR + 1, 5) (min-SNR-gamma, Hang
  et al. 2023, with a floor of 1 at high noise, where the layout and background are decided);
  ``prediction_type="epsilon"`` is the old recipe (epsilon MSE, min-SNR-5).
- Data: a seeded pool of rendered scenes; ``without`` removes a concept from it (RETRAIN: each
  scene with the concept gets that factor redrawn among the other values, so it is never
  rendered, hence never captioned); every other scene, the draws and the schedule as ORG's.
- Captions: ``caption_mix`` (English, paraphrases, de/fr/es/it/zh), replaced by the empty
  caption 10% of the time so classifier-free guidance works.
- AdamW, linear warm-up then cosine decay, gradient clipping 1, an exponential moving average of
  the weights (what is shipped), bfloat16 autocast where the CPU supports it natively.

``train_t2i(out_dir, clip_dir, config)`` writes ``out_dir`` (a ``MiniWorldPipeline`` folder,
rewritten at every checkpoint, so an interrupted run still leaves the latest one), optional EMA
UNet checkpoints, and ``out_dir/igmu_t2i.json``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igmu.miniworld.clip_train import (
    ClipTrainConfig,
    ScenePool,
    load_clip,
    lr_at,
    torch_threads,
)
from igmu.miniworld.t2i_model import (
    DEFAULT_GUIDANCE,
    DEFAULT_PREDICTION,
    DEFAULT_STEPS,
    METADATA,
    SAMPLER,
    SCHEDULER,
    SCHEMA,
    UNET_ARCH,
    build_schedulers,
    build_unet,
    make_pipeline,
    text_encoder_from_clip,
    write_metadata,
)
from igmu.miniworld.t2i_objective import Batcher, Ema, diffusion_loss
from igmu.miniworld.world import WORLD_VERSION, has_target


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
    prediction_type: str = DEFAULT_PREDICTION
    # RETRAIN: a target (shape=cross, style=stripes, attribute) never rendered nor captioned.
    without: str | None = None
    render_workers: int = 1  # processes rendering the pool (same bytes; for many-core hosts)


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


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train_t2i(
    out_dir: str | Path,
    clip_dir: str | Path,
    config: T2IConfig | None = None,
    log: Callable[[str], None] = print,
    checkpoints_dir: str | Path | None = None,
    observe: Callable[[list[Any], list[str]], None] | None = None,
) -> dict[str, Any]:
    """Train the UNet against the frozen CLIP text encoder of ``clip_dir``; write the pipeline
    folder ``out_dir`` (EMA weights) and its ``igmu_t2i.json``. ``observe(scenes, captions)``
    sees every batch the model is shown (an audit hook: what did this run train on?)."""
    config = config or T2IConfig()
    with torch_threads(config.threads):
        return _train_t2i(Path(out_dir), Path(clip_dir), config, log, checkpoints_dir, observe)


def _train_t2i(
    out: Path,
    clip_dir: Path,
    config: T2IConfig,
    log: Callable[[str], None],
    checkpoints_dir: str | Path | None,
    observe: Callable[[list[Any], list[str]], None] | None,
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
    scheduler, _ = build_schedulers(config.prediction_type)
    # RETRAIN: the same seeded pool, each scene with the concept redrawn without it.
    pool = ScenePool(config.pool_size, config.seed + 10, config.without, config.render_workers)
    batcher = Batcher(pool, tokenizer, encoder, config.uncond_prob, device, observe)
    world = {"version": WORLD_VERSION, "without": config.without}
    if config.without is not None:
        world["pool_scenes_with_concept"] = sum(has_target(s, config.without) for s in pool.scenes)
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
                diffusion_loss(
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
    ema = Ema(unet, config.ema_decay)
    losses: list[float] = []
    pending: list[Any] = []
    checkpoints: list[dict[str, Any]] = []
    train_start = time.time()
    unet.train()

    def flush() -> None:
        # Read the losses back in bulk: a read per step would stall a GPU every step.
        if pending:
            losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    def save(step: int) -> None:
        flush()
        ema_unet = ema.copy_to(copy.deepcopy(unet)).eval().to("cpu")
        pipeline = make_pipeline(ema_unet, clip_dir, config.prediction_type)
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
        write_metadata(out, _metadata(config, bf16, params, losses, checkpoints, {}, world))
        log(f"[t2i] checkpoint at step {step} -> {out}")

    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        x0, states = batcher.draw(rng, config.batch_size)
        t = torch.randint(0, steps_total, (config.batch_size,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        loss = diffusion_loss(torch, unet, scheduler, x0, states, t, noise, config.snr_gamma, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.update(unet, step)
        pending.append(loss.detach())
        if step % 50 == 0 or step == config.steps - 1:
            flush()
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
    pipeline = make_pipeline(ema_unet.to("cpu"), clip_dir, config.prediction_type)
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
        from igmu.miniworld.t2i_eval import judge_accuracy
        from igmu.miniworld.t2i_model import load_pipeline

        reloaded = load_pipeline(out).to(device)
        result["judges"] = {}
        for guidance in config.eval_guidance:
            eval_start = time.time()
            report = judge_accuracy(
                reloaded,
                n=config.eval_images,
                guidance_scale=guidance,
                num_inference_steps=config.eval_steps,
                without=config.without,
            )
            report["seconds"] = round(time.time() - eval_start, 1)
            result["judges"][f"guidance_{guidance:g}"] = report
            log(f"[t2i] judges, guidance {guidance:g}: {json.dumps(report['accuracy'])}")
    result["total_seconds"] = round(time.time() - start, 1)
    metadata = _metadata(config, bf16, params, losses, checkpoints, result, world)
    write_metadata(out, metadata)
    return metadata


def _metadata(
    config: T2IConfig,
    bf16: bool,
    params: int,
    losses: list[float],
    checkpoints: list[dict[str, Any]],
    result: dict[str, Any],
    world: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "unet": {**UNET_ARCH, "parameters": params},
        "scheduler_train": {
            "class": "DDPMScheduler",
            **SCHEDULER,
            "prediction_type": config.prediction_type,
        },
        "scheduler_sample": {
            "class": "DDIMScheduler",
            **SCHEDULER,
            **SAMPLER,
            "prediction_type": config.prediction_type,
        },
        "sampling_defaults": {
            "num_inference_steps": DEFAULT_STEPS,
            "guidance_scale": DEFAULT_GUIDANCE,
        },
        # What the model saw: the whole world, or the world without one concept (RETRAIN).
        "world": world,
        "train": {
            **asdict(config),
            "bf16": bf16,
            "loss": "v MSE, x0 error weighted min(SNR + 1, gamma)"
            if config.prediction_type == "v_prediction"
            else "epsilon MSE, min-SNR-gamma",
        },
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

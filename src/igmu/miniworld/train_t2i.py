"""Train the MiniWorld's models: the tiny CLIP, then the tiny text-to-image diffusion model.

The parts live in ``t2i_model`` (UNet, schedulers, pipeline folder), the training loop in
``t2i_training``, the judge evaluation of generated images in ``t2i_eval``; this module chains
them and is the command line (its names are re-exported for callers of the old single module).

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
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from igmu.miniworld.clip_train import ClipTrainConfig, train_clip
from igmu.miniworld.t2i_eval import (
    JUDGE_EVAL_SEED,
    JUDGED_FACTORS,
    evaluate_folder,
    generate,
    judge_accuracy,
    judge_prompts,
)
from igmu.miniworld.t2i_model import (
    DEFAULT_GUIDANCE,
    DEFAULT_PREDICTION,
    DEFAULT_STEPS,
    METADATA,
    PREDICTION_TYPES,
    SAMPLER,
    SCHEDULER,
    SCHEMA,
    UNET_ARCH,
    build_schedulers,
    build_unet,
    default_t2i_dir,
    load_pipeline,
    make_pipeline,
    text_encoder_from_clip,
)
from igmu.miniworld.t2i_training import (
    SHORT_CLIP,
    SHORT_T2I,
    T2IConfig,
    native_bf16,
    train_t2i,
)

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_PREDICTION",
    "PREDICTION_TYPES",
    "DEFAULT_STEPS",
    "JUDGED_FACTORS",
    "JUDGE_EVAL_SEED",
    "METADATA",
    "SAMPLER",
    "SCHEDULER",
    "SCHEMA",
    "SHORT_CLIP",
    "SHORT_T2I",
    "UNET_ARCH",
    "T2IConfig",
    "build_schedulers",
    "build_unet",
    "default_t2i_dir",
    "evaluate_folder",
    "generate",
    "judge_accuracy",
    "judge_prompts",
    "load_pipeline",
    "main",
    "make_pipeline",
    "native_bf16",
    "text_encoder_from_clip",
    "train",
    "train_t2i",
]

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
    without: str | None = None,
    prediction_type: str | None = None,
    render_workers: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the tiny CLIP (unless ``clip_dir`` gives a trained one), then the text-to-image
    model. Writes ``out_dir/clip``, ``out_dir/t2i`` and ``out_dir/checkpoints``. ``short``: the
    CI schedule. Returns the text-to-image metadata plus ``clip`` (the CLIP's metadata or None).
    ``device``: where both train (``cuda``: same seeded draws, different bits).
    ``without``: a target (``shape=cross``...) the text-to-image model never sees (RETRAIN); the
    CLIP, like Stable Diffusion's text encoder, is always trained on the whole world, so pass ORG's
    ``clip_dir`` to share it.
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
    if prediction_type is not None:
        t2i_config = replace(t2i_config, prediction_type=prediction_type)
    t2i_config = replace(t2i_config, without=without, render_workers=render_workers)
    if threads is not None:
        t2i_config = replace(t2i_config, threads=threads)
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
        "--retrain-without",
        metavar="TASK",
        default=None,
        help="RETRAIN: train the text-to-image model on the world without TASK's concept "
        "(mini_object: no cross, mini_style: no stripes, mini_attribute: no spot is ever "
        "rendered or captioned); all else as ORG. Pass ORG's CLIP with --clip to share it",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default {T2IConfig.threads}; short {SHORT_T2I.threads}); "
        "1 when several trainings share few cores",
    )
    parser.add_argument(
        "--render-workers",
        type=int,
        default=1,
        help="processes rendering the text-to-image training pool (same images; default 1)",
    )
    parser.add_argument(
        "--prediction-type",
        choices=PREDICTION_TYPES,
        default=None,
        help=f"what the UNet predicts (default {DEFAULT_PREDICTION}; epsilon is the old recipe, "
        "which ignores background words)",
    )
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
    without = None
    if args.retrain_without:
        from igmu.core.errors import ConfigError
        from igmu.miniworld.retrain import concept_of

        try:
            without = concept_of(args.retrain_without)
        except (ConfigError, KeyError) as error:
            parser.error(f"--retrain-without {args.retrain_without}: {error}")

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
        without=without,
        prediction_type=args.prediction_type,
        render_workers=args.render_workers,
        threads=args.threads,
    )
    log(
        f"done in {time.time() - started:.0f}s; probe loss "
        f"{metadata['probe_loss_before']:.4f} -> {metadata['probe_loss_after_ema']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

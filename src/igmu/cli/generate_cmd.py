"""`igmu generate`: run a task's prompt sets through each method's pipeline into a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from igmu.cli.options import (
    add_sampling_overrides,
    add_threads,
    apply_threads,
    positive_int,
)
from igmu.core.errors import IGMUError
from igmu.core.files import check_writable
from igmu.core.threads import threads_restored

# spelled here to keep `igmu --help` free of torch imports; checked against the engine's in tests
DEFAULT_BATCH_SIZE = 8
DTYPES = ("float32", "float16", "bfloat16")
BACKENDS = ("local", "ray")

DESCRIPTION = (
    "Generate a task's images for one or more methods with diffusers pipelines. ORG is the "
    "models file's generator.model; NEGPROMPT is ORG with the task's concept as negative prompt; "
    "other methods are models-file 'methods' entries: a pipeline folder, or a base pipeline plus "
    "UNet / text-encoder / CompVis / partial / LoRA / adapter weights. Image k of every "
    "prompt uses seed k, so methods pair by key. Each image is a file named by sha256 over "
    "(model fingerprint, prompt, seed, settings, batch) under DIR/images/, written atomically and "
    "never "
    "regenerated; DIR/manifest.jsonl (for `igmu evaluate --layout manifest`) lists every method "
    "generated into DIR. Interrupt at any time (even kill -9) and rerun to finish: the result is "
    "byte-identical to an uninterrupted run."
)
EPILOG = (
    "example: igmu generate --task church --method ORG,NEGPROMPT --out gen/church "
    "--models models.yaml --max-prompts-per-class 5 && igmu evaluate --task church "
    "--images gen/church/manifest.jsonl --layout manifest --out runs/church --models models.yaml"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="built-in task name or task YAML path")
    parser.add_argument(
        "--method",
        required=True,
        help="method name(s), comma-separated: ORG, NEGPROMPT or a 'methods' entry of the "
        "models file",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder for images/ and manifest.jsonl",
    )
    parser.add_argument(
        "--models",
        type=Path,
        metavar="FILE",
        help="models file (YAML) with 'generator' and 'methods'; see `igmu models` (default: "
        "the task's world's shipped models for MiniWorld tasks, else the built-in defaults)",
    )
    parser.add_argument(
        "--images-per-prompt",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per prompt, seeds 0..N-1 (default 1)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"images per pipeline call (default {DEFAULT_BATCH_SIZE}). Batches are fixed "
        "slices of the jobs in key order and every image's cache key names its batch, so "
        "reruns and resumed runs give the same bytes",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--per-image",
        action="store_true",
        help="run every image alone: slower, but an image is then the same whatever "
        "--batch-size (its cache key names no batch)",
    )
    mode.add_argument(
        "--pipeline-batching",
        action="store_true",
        help="one pipeline call per batch (the default; kept for older scripts)",
    )
    parser.add_argument(
        "--prompt-sets",
        metavar="SETS",
        help="comma-separated prompt sets (default: every set the method needs; ORG also gets "
        "'stripped' for attribute tasks)",
    )
    parser.add_argument(
        "--max-prompts-per-class",
        type=positive_int,
        metavar="K",
        help="only the first K prompts of each class (small, quick runs)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights and compute dtype (default float32; float16/bfloat16 on GPUs); part of "
        "the generator fingerprint, so of every cache key",
    )
    parser.add_argument(
        "--backend",
        default="local",
        choices=BACKENDS,
        help="local (this process) or ray: one worker per GPU (or CPU) of a Ray cluster, "
        "writing into the same cache (byte-identical to local; a dead worker's batches are "
        "retried). Needs igmu[ray]",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join (default: start a local one)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="Ray workers (default: one per GPU with --device cuda, else one per CPU)",
    )
    parser.add_argument(
        "--worker-threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="torch threads of each CPU Ray worker (default 1)",
    )
    add_sampling_overrides(parser)
    add_threads(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="generate a task's images for unlearning methods (cached, resumable)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    from igmu.backbones.config import load_models_config
    from igmu.generation.engine import GenerateOptions, generate
    from igmu.generation.plan import SettingOverrides
    from igmu.tasks import load_task

    check_writable(args.out, "--out")
    task = load_task(args.task)
    models = load_models_config(args.models, task)
    apply_threads(args)
    options = GenerateOptions(
        methods=_split(args.method) or [],
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
        prompt_sets=_split(args.prompt_sets),
        max_prompts_per_class=args.max_prompts_per_class,
        device=args.device,
        dtype=args.dtype,
        overrides=SettingOverrides(args.steps, args.guidance, args.height, args.width),
        pipeline_batching=not args.per_image,
        progress=not args.quiet,
        backend=args.backend,
        ray_address=args.ray_address,
        workers=args.workers,
        worker_threads=args.worker_threads,
    )
    result = generate(task, args.out, models, options)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{len(result.rows)} images ({result.generated} generated, {result.cached} cached) -> "
        f"{result.manifest}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m igmu.cli.generate_cmd ARGS`: the same command outside `igmu`."""
    parser = argparse.ArgumentParser(prog="igmu generate", description=DESCRIPTION, epilog=EPILOG)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with threads_restored():
            return run(args)
    except IGMUError as exc:
        print(f"igmu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("igmu: interrupted; finished images are cached, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`igmu unlearn`: apply a built-in unlearning method to a diffusers pipeline, write the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from igmu.cli.options import add_threads, apply_threads
from igmu.core.errors import ConfigError, IGMUError
from igmu.core.files import check_writable
from igmu.core.threads import threads_restored

EPILOG = """examples:
  igmu unlearn --method UCE --task church --base models/sd14 --out models/church-UCE
  igmu unlearn --method UCE --task van_gogh --base CompVis/stable-diffusion-v1-4 --out vg-UCE \\
      --preserve "Claude Monet,Paul Cezanne" --set lamb=0.5 --set tokens=tail
  igmu unlearn --method ESD --task nudity --base models/sd14 --out nudity-ESD \\
      --steps 1000 --lr 1e-5 --eta 1.0 --device cuda
  igmu unlearn --method NEGPROMPT --task church --base models/sd14 --out church-NEG --card-only
  igmu unlearn --method SLD --task nudity --base models/sd14 --out nudity-SLD --card-only \\
      --set preset=strong

Each output folder is a diffusers pipeline (safetensors) that DiffusionPipeline.from_pretrained
loads, with igmu_method.json: method, task, concept prompts, preserved concepts,
hyper-parameters, seed, base fingerprint, UNet fingerprint, the cost of the unlearning and,
for the inference-time methods, what generation must apply (NEGPROMPT's negative_prompt,
SLD's sampler_guidance). Methods that publish another form (a
text encoder, pruning masks) write that form and the models-file entry that loads it.

methods and their settings (--set KEY=VALUE; defaults for SD, [MiniWorld defaults]):
"""


def method_listing(width: int = 96) -> str:
    """Every registered method: its summary and settings with defaults (from the registry)."""
    import textwrap

    from igmu.methods import METHODS

    lines = []
    for name in METHODS.names():
        method = METHODS.get(name)
        lines += textwrap.wrap(f"{name}: {method.summary}", width, initial_indent="  ",
                               subsequent_indent="      ")
        world = method.world_defaults.get("miniworld", {})
        shown = []
        for key, value in method.defaults.items():
            text = f"{key} ({value})"
            if key in world:
                text = f"{key} ({value} [{world[key]}])"
            shown.append(text)
        if method.card_only_allowed:
            shown.append("card_only (false)")
        if shown:
            lines += textwrap.wrap(", ".join(shown), width, initial_indent="      ",
                                   subsequent_indent="      ")
    return "\n".join(lines)

# option -> setting name; only options the user gave become settings, so an option a method
# does not take is reported instead of silently ignored.
OPTION_SETTINGS = {
    "concepts": "concepts",
    "preserve": "preserve",
    "anchor": "anchor",
    "negative_prompt": "negative_prompt",
    "steps": "steps",
    "lr": "lr",
    "eta": "eta",
    "card_only": "card_only",
    "dtype": "dtype",
}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "unlearn",
        help="erase a task's concept from a diffusers pipeline (UCE, ESD, FMN, CA, ...)",
        description="Apply a built-in unlearning method to a Stable-Diffusion-style pipeline\n"
        "(UNet2DConditionModel + CLIP text encoder) for a task's concept and write a loadable\n"
        "diffusers pipeline folder with its method card (igmu_method.json).",
        epilog=EPILOG + method_listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--method", required=True, help="a built-in method (listed below), case-insensitive"
    )
    parser.add_argument("--task", required=True, help="built-in task name or task YAML path")
    parser.add_argument(
        "--base",
        help="base pipeline: a diffusers save_pretrained folder or a Hugging Face id "
        "(read from the local cache when HF_HUB_OFFLINE=1); default: generator.model of "
        "--models, or the shipped model of a MiniWorld task",
    )
    parser.add_argument(
        "--models", type=Path, help="models file whose generator.model is the base (see --base)"
    )
    parser.add_argument(
        "--base-method",
        metavar="NAME",
        help="start from a method of --models instead: its entry (a pipeline folder, or a base "
        "plus UNet / text-encoder / LoRA / partial weights) is loaded as `igmu generate` loads it",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder to write")
    parser.add_argument(
        "--concepts",
        help="comma-separated prompts to erase (default: the task's concept name and words)",
    )
    parser.add_argument(
        "--preserve",
        help="methods that preserve (UCE, SalUn, AdvUnlearn): comma-separated concepts to keep "
        "(default: the task's unlearning.preserve prompts, else its unrelated and related class "
        "names; 'none' for none)",
    )
    parser.add_argument(
        "--anchor",
        help="UCE, CA, SalUn: anchor prompt (default: the task's paired anchors, else the "
        "method's own)",
    )
    parser.add_argument("--negative-prompt", help="NEGPROMPT: the negative prompt to record")
    parser.add_argument("--steps", type=int, help="training steps (methods that train)")
    parser.add_argument("--lr", type=float, help="learning rate (methods that train)")
    parser.add_argument("--eta", type=float, help="ESD, AdvUnlearn: negative guidance")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        help="compute dtype (training methods: autocast around float32 master weights; UCE "
        "always solves in float64); the weights written stay float32. Default float32",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any method setting (repeatable), e.g. --set lamb=0.1 --set tokens=tail",
    )
    parser.add_argument(
        "--card-only",
        action="store_true",
        default=None,
        help="NEGPROMPT: write only igmu_method.json, not a copy of the weights",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists and is not empty"
    )
    add_threads(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip().replace("-", "_")] = value
    for option, key in OPTION_SETTINGS.items():
        value = getattr(args, option)
        if value is not None:
            settings[key] = value
    settings.update(
        seed=args.seed, device=args.device, progress=not args.quiet, overwrite=args.overwrite
    )
    return settings


def base_model(args: argparse.Namespace, task: Any) -> Any:
    """--base; else --base-method's models-file entry (a PipelineSource); else the models file's
    (or the task's world's) generator.model."""
    from igmu.backbones.config import load_models_config

    if args.base and args.base_method:
        raise ConfigError("give --base or --base-method, not both")
    if args.base:
        return str(args.base)
    if args.base_method:
        from igmu.generation.plan import (
            SettingOverrides,
            base_settings,
            canonical_methods,
            resolve_method,
        )

        models = load_models_config(args.models, task)
        name = canonical_methods([args.base_method], models)[0]
        spec = resolve_method(name, task, models, base_settings(models, SettingOverrides()))
        return spec.pipeline_source
    if args.models is None and task.world is None:
        raise ConfigError(
            f"--base is required for task {task.name!r}: give a diffusers pipeline folder or "
            "Hugging Face id (or --models FILE with generator.model)"
        )
    return str(load_models_config(args.models, task).get("generator")["model"])


def run(args: argparse.Namespace) -> int:
    from igmu.methods import get_method
    from igmu.tasks import load_task

    apply_threads(args)
    method = get_method(args.method)
    task = load_task(args.task)
    settings = settings_from_args(args)
    method.settings(settings)  # report a bad setting before loading any weights
    check_writable(args.out, "--out")
    result = method.apply(base_model(args, task), task, settings, args.out)
    card = result.card
    if card["pipeline_folder"]:
        print(
            f"{method.name} for task {task.name}: wrote {result.out} "
            f"(UNet sha256 {card['unet_state_sha256'][:16]}...)"
        )
    else:
        print(
            f"{method.name} for task {task.name}: wrote {result.card_path} (card only; load "
            f"the weights of {card['base']['reference']})"
        )
    for key, value in card["stats"].items():
        if not isinstance(value, list | dict):  # loss curves and per-layer lists stay in the card
            print(f"  {key}: {value}")
    cost = card.get("cost") or {}
    if cost:
        print(f"  cost: {cost.get('wall_seconds')} s wall, {cost.get('cpu_seconds')} s CPU, "
              f"{cost.get('changed_parameters')} parameters changed")
    if card["negative_prompt"] is not None:
        print(f"generate with negative_prompt={card['negative_prompt']!r}")
    guidance = card.get("sampler_guidance")
    if guidance is not None:
        print(f"generate with {guidance['kind']} guidance away from {guidance['concept']!r} "
              "(igmu generate and igmu attack read it from the card)")
    print(f"card: {result.card_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`igmu unlearn ARGS` on its own (argv excludes the word 'unlearn'); returns the exit code."""
    parser = argparse.ArgumentParser(prog="igmu")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(commands)
    args = parser.parse_args(["unlearn", *(sys.argv[1:] if argv is None else argv)])
    try:
        with threads_restored():
            return int(args.handler(args) or 0)
    except IGMUError as exc:
        print(f"igmu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("igmu: interrupted; nothing was written to --out", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

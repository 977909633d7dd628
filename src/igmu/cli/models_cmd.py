"""`igmu models`: the models file, and tiny random models for offline smoke runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models",
        help="show the models file fields, or write tiny models",
        description="Every network is configuration: a Hugging Face id (online or from the "
        "local cache with HF_HUB_OFFLINE=1) or a local folder/file. Without a subcommand, "
        "prints the default models file.",
    )
    parser.add_argument(
        "--world",
        choices=["mini", "miniworld"],
        help="print the models file of a world whose models ship with igmu (mini = the "
        "MiniWorld; its tasks use it when no --models is given)",
    )
    parser.add_argument(
        "--task",
        help="with --world: the models a task of that world uses (its RETRAIN model included)",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    tiny = sub.add_parser(
        "make-tiny",
        help="write tiny random models of every architecture + DIR/models.yaml",
        description="Write tiny RANDOM models (CLIP with a 512-d projection, IGMU heads, an "
        "AlexNet for LPIPS) and DIR/models.yaml. For smoke runs: the numbers mean nothing.",
    )
    tiny.add_argument("dir", type=Path)
    tiny.add_argument(
        "--igmu-heads",
        type=Path,
        help="use the official IGMU head .pth files from this folder instead of random heads",
    )
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=run_make_tiny)
    parser.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    import yaml

    from igmu.backbones.config import all_defaults

    if args.world:
        from igmu.worlds import get_world

        world = get_world("miniworld" if args.world == "mini" else args.world)
        print(f"# The {world.name} world's models file: what its tasks use without --models.")
        print("# Add unlearned models under 'methods' (paths are relative to this file).")
        print(yaml.safe_dump(world.models(args.task), sort_keys=False).rstrip())
        return 0
    print("# Default models file (copy, edit, pass with --models FILE)")
    print(yaml.safe_dump(all_defaults(), sort_keys=False).rstrip())
    return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    from igmu.testing.tiny import make_tiny

    path = make_tiny(args.dir, args.igmu_heads, args.seed)
    print(f"wrote tiny random models and {path}")
    return 0

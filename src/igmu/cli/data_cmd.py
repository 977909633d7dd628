"""`igmu data`: DataIGM datasets (build from a task's prompts, import, export)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from igmu.core.files import check_writable

BUILD_EXAMPLE = """example:
  igmu data build --task mini_object --out data/mini_object --images-per-prompt 4
  igmu data build --task church --out data/church --models models.yaml --split 0.8,0.1,0.1
"""
IMPORT_EXAMPLE = """example:
  igmu data import --src IGMU/training_demo_Object_Church --concept church --out data/church-real
  igmu data import --src exported-hf/ --out data/copy      # a folder from `igmu data export`
"""
EXPORT_EXAMPLE = """example:
  igmu data export --data data/mini_object --format hf --out exports/mini_object-hf
  igmu data export --data data/mini_object --format parquet --out exports/mini_object-parquet
"""


class ExampleFormatter(argparse.HelpFormatter):
    """Wraps the description; keeps an ``example:`` epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return text
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent
        )


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "data",
        help="DataIGM: build, import and export labelled concept datasets",
        description="DataIGM datasets in the layout <split>/<class>/<file> (what IGMU's trainer "
        "and torchvision's ImageFolder read) with manifest.jsonl and datacard.json.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    formatter = ExampleFormatter

    build = sub.add_parser(
        "build",
        help="generate concept / concept-free images from a task's prompts",
        formatter_class=formatter,
        epilog=BUILD_EXAMPLE,
        description="ORG (the models file's generator) draws the forget prompts (label 1) and "
        "the concept-free prompts (label 0: stripped prompts for attribute tasks, unrelated and "
        "related prompts for entity tasks) through the generation cache; the task's detectors "
        "cross-check every label and disagreements are listed in datacard.json. Splits are by "
        "prompt. Resumable: rerun the same command after an interruption. MiniWorld tasks "
        "(mini_*) use the shipped MiniWorld models unless --models is given.",
    )
    build.add_argument("--task", required=True, help="built-in task name or task YAML path")
    build.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    build.add_argument("--models", type=Path, help="models file (YAML); see `igmu models`")
    build.add_argument("--images-per-prompt", type=int, default=1, help="seeds 0..N-1 (default 1)")
    build.add_argument(
        "--split",
        default="0.7,0.15,0.15",
        help="train,val,test fractions of the prompts (default 0.7,0.15,0.15)",
    )
    build.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    build.add_argument("--max-prompts-per-class", type=int, help="first N prompts of each class")
    build.add_argument(
        "--detectors",
        help="comma-separated detectors for the label cross-check "
        "(default: the task's; 'none' for no check)",
    )
    build.add_argument("--batch-size", type=int, default=16)
    build.add_argument(
        "--oracle",
        action="store_true",
        help="MiniWorld tasks only: draw with "
        "the renderer (a perfect text-to-image model with exact labels)",
    )
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(handler=run_build)

    imp = sub.add_parser(
        "import",
        help="real labelled image folders (or an export) into the DataIGM layout",
        formatter_class=formatter,
        epilog=IMPORT_EXAMPLE,
        description="Copy <class>/<file> or <split>/<class>/<file> folders (or a folder from "
        "`igmu data export`) into the layout; unreadable files are named and left out, "
        "duplicates by sha256 are reported.",
    )
    imp.add_argument("--src", required=True, type=Path)
    imp.add_argument("--out", required=True, type=Path)
    imp.add_argument("--concept", help="class folder holding the concept (label 1)")
    imp.add_argument(
        "--all-concept-free",
        action="store_true",
        help="every image is label 0 (a false-positive audit set); --concept names the concept",
    )
    imp.add_argument(
        "--split", default="0.7,0.15,0.15", help="fractions when the source has no split folders"
    )
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--quiet", action="store_true")
    imp.set_defaults(handler=run_import)

    exp = sub.add_parser(
        "export",
        help="write a DataIGM folder as a Hugging Face dataset or parquet files",
        formatter_class=formatter,
        epilog=EXPORT_EXAMPLE,
        description="Through the Hugging Face `datasets` library (extra 'data'): hf = "
        "DatasetDict.save_to_disk, parquet = <split>.parquet. Label is a ClassLabel in the "
        "card's class order (1 = concept).",
    )
    exp.add_argument("--data", required=True, type=Path)
    exp.add_argument("--format", required=True, choices=["hf", "parquet"])
    exp.add_argument("--out", required=True, type=Path)
    exp.set_defaults(handler=run_export)


def _list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def run_build(args: argparse.Namespace) -> int:
    from igmu.backbones.config import load_models_config
    from igmu.core.errors import ConfigError
    from igmu.dataset.dataigm import parse_fractions
    from igmu.tasks import load_task
    from igmu.workflows.dataigm_build import BuildOptions, build_dataset

    check_writable(args.out, "--out")
    if args.images_per_prompt < 1:
        raise ConfigError(f"--images-per-prompt must be >= 1, got {args.images_per_prompt}")
    task = load_task(args.task)
    models = load_models_config(args.models) if args.models else None
    options = BuildOptions(
        images_per_prompt=args.images_per_prompt,
        fractions=parse_fractions(args.split),
        seed=args.seed,
        max_prompts_per_class=args.max_prompts_per_class,
        detectors=_list(args.detectors),
        batch_size=args.batch_size,
        oracle=args.oracle,
        progress=not args.quiet,
    )
    result = build_dataset(task, args.out, models, options)
    card = result.card
    print(
        f"{len(result.rows)} images ({result.generated} generated, {result.cached} cached) "
        f"in {args.out}: {card['counts']}"
    )
    checks = card["cross_check"]["detectors"]
    for name, stats in checks.items():
        print(
            f"cross-check {name}: {stats['disagree']} of {stats['n']} labels disagree "
            f"({stats['concept_not_flagged']} concept not flagged, {stats['other_flagged']} "
            "other flagged); listed in datacard.json"
        )
    return 0


def run_import(args: argparse.Namespace) -> int:
    from igmu.dataset.dataigm import parse_fractions
    from igmu.dataset.importer import import_images

    check_writable(args.out, "--out")
    result = import_images(
        args.src,
        args.out,
        args.concept,
        parse_fractions(args.split),
        args.seed,
        progress=not args.quiet,
        concept_free=args.all_concept_free,
    )
    card = result.card
    for entry in card["rejected"]:
        print(f"left out: {entry['path']}: {entry['reason']}")
    for entry in card["duplicates"]:
        notes = [n for n in ("label_conflict", "split_conflict") if entry[n]]
        print(
            f"duplicate: {entry['path']} = {entry['same_as']}"
            + (f" ({', '.join(notes)})" if notes else "")
        )
    print(
        f"{len(result.rows)} images in {args.out}: {card['counts']} "
        f"({len(card['rejected'])} left out, {len(card['duplicates'])} duplicates)"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from igmu.dataset.dataigm import read_dataigm
    from igmu.dataset.exchange import export_dataset

    check_writable(args.out, "--out")
    data = read_dataigm(args.data, verify=True)
    out = export_dataset(data, args.out, args.format)
    print(f"{len(data.rows)} images exported as {args.format} to {out}")
    return 0

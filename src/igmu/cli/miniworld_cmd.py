"""`igmu miniworld`: train the MiniWorld's models (judges, CLIP, text-to-image) from scratch."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from igmu.core.files import check_writable


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "miniworld", help="train or check the MiniWorld's judges, CLIP and text-to-image model",
        description="The MiniWorld is a procedural image world with exact ground truth; igmu "
        "ships models trained on it. These commands retrain them deterministically.",
    )
    sub = parser.add_subparsers(dest="miniworld_command", metavar="SUBCOMMAND")
    sub.required = True
    train = sub.add_parser(
        "train", help="train judges, then CLIP, then the text-to-image model into --out "
        "(or, with --retrain-without TASK, a RETRAIN text-to-image model)",
        description="Train every MiniWorld model: judges (DataIGM layout), the tiny CLIP "
        "(contrastive) and the tiny text-to-image model (diffusion). --short runs the CI "
        "schedule in about a minute; the full schedule's time is in docs/design/miniworld.md.",
    )
    train.add_argument("--out", required=True, type=Path)
    train.add_argument("--short", action="store_true", help="tiny schedule (CI smoke run)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, help="text-to-image steps (default: the schedule's)")
    train.add_argument("--clip-steps", type=int, help="CLIP steps (default: the schedule's)")
    train.add_argument("--device", default="cpu",
                       help="where CLIP and the text-to-image model train: cpu (default, "
                       "bit-reproducible) or cuda; judges always train on the CPU")
    train.add_argument("--clip", type=Path, metavar="DIR",
                       help="use this trained tiny CLIP (e.g. the shipped "
                       "igmu/miniworld/weights/clip) instead of training one")
    train.add_argument("--retrain-without", metavar="TASK",
                       help="RETRAIN, the gold standard: train only the text-to-image model, from "
                       "scratch, on the world without TASK's concept (mini_object: no cross, "
                       "mini_style: no stripes, mini_attribute: no white spot is ever rendered "
                       "or captioned); schedule, seed and caption mix as ORG's, the CLIP from "
                       "--clip (default: the shipped one, as ORG's). Writes --out/t2i; copy it "
                       "to igmu/miniworld/weights/retrain/TASK to ship it")
    train.set_defaults(handler=run_train)
    judges = sub.add_parser(
        "judges", help="train or evaluate judges only (see --help of each)", add_help=False,
        description="Forwarded to the judges tool: `igmu miniworld judges train --out DIR` or "
        "`igmu miniworld judges evaluate`.",
    )
    judges.add_argument("args", nargs=argparse.REMAINDER)
    judges.set_defaults(handler=run_judges)


def run_judges(args: argparse.Namespace) -> int:
    from igmu.miniworld import judges

    return int(judges.main(list(args.args)) or 0)


def run_train(args: argparse.Namespace) -> int:
    from igmu.miniworld import judges, train_t2i
    from igmu.miniworld.clip_train import default_clip_dir

    check_writable(args.out, "--out")
    started = time.perf_counter()
    if not args.retrain_without:  # judges belong to the world, not to one model: ORG runs only
        judge_args = ["train", "--out", str(args.out / "judges"), "--seed", str(args.seed)]
        if args.short:
            judge_args += ["--n-train", "400", "--n-test", "200", "--epochs", "1",
                           "--threads", "1"]
        code = judges.main(judge_args)
        if code:
            return int(code)
    t2i_args = ["--out", str(args.out), "--seed", str(args.seed)]
    clip = args.clip or (default_clip_dir() if args.retrain_without else None)
    if clip is not None:
        t2i_args += ["--clip", str(clip)]
    if args.retrain_without:
        t2i_args += ["--retrain-without", args.retrain_without]
    if args.short:
        t2i_args.append("--short")
    if args.steps is not None:
        t2i_args += ["--steps", str(args.steps)]
    if args.clip_steps is not None:
        t2i_args += ["--clip-steps", str(args.clip_steps)]
    t2i_args += ["--device", args.device]
    code = train_t2i.main(t2i_args)
    print(f"miniworld models in {args.out} ({time.perf_counter() - started:.0f} s)")
    return int(code or 0)

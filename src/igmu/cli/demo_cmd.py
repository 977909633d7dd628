"""`igmu demo`: the whole benchmark on the MiniWorld, offline, in minutes on a CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from igmu.core.files import check_writable


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo", help="run the whole benchmark on the MiniWorld (offline, CPU, minutes)",
        description="Erase each MiniWorld task's concept with UCE and ESD, generate ORG, UCE, "
        "ESD and NEGPROMPT images (and RETRAIN's, the model trained without the concept, where "
        "shipped) with the shipped tiny text-to-image model, attack every method "
        "(text_grad, seed_search), evaluate all five aspects and write one report with a tab "
        "per task. Writes DIR/metrics.csv, DIR/report.html and DIR/runs/<task>/.",
    )
    from igmu.workflows.demo import DemoOptions

    defaults = DemoOptions()
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--tasks", help="comma-separated MiniWorld tasks (default: all)")
    parser.add_argument("--forget-prompts", type=int, default=defaults.forget_prompts,
                        help="forget prompts per task (default %(default)s), each drawn "
                        f"{defaults.forget_images_per_prompt} times")
    parser.add_argument("--prompts-per-class", type=int, default=defaults.prompts_per_class,
                        help="prompts per class of the other prompt sets (default %(default)s)")
    parser.add_argument("--images-per-prompt", type=int, default=defaults.images_per_prompt,
                        help="images per prompt of the other prompt sets (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="DDIM steps per image (default %(default)s)")
    parser.add_argument("--attacks", default=",".join(defaults.attacks),
                        help="attacks run on every method, comma-separated ('' for none; "
                        "default %(default)s; text_grad at budget 6 and seed_search at budget 2, "
                        "half of `igmu attack`'s defaults)")
    parser.add_argument("--attack-prompts", type=int, default=defaults.attack_prompts,
                        help="forget prompts attacked per task and method (default "
                        "%(default)s)")
    from igmu.cli.options import add_threads

    add_threads(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from igmu.cli.evaluate_cmd import print_summary
    from igmu.cli.options import apply_threads
    from igmu.core.errors import ConfigError
    from igmu.core.registry import did_you_mean
    from igmu.workflows.demo import MINI_TASKS, DemoOptions, run_demo

    apply_threads(args)
    check_writable(args.out, "--out")
    tasks = tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else MINI_TASKS
    for task in tasks:
        if task not in MINI_TASKS:
            raise ConfigError(
                f"--tasks: {task!r} is not a MiniWorld task.{did_you_mean(task, list(MINI_TASKS))}"
            )
    from igmu.attacks import get_attack

    for attack in (a.strip() for a in args.attacks.split(",") if a.strip()):
        get_attack(attack)  # an unknown name fails now, with "did you mean"
    if args.attack_prompts < 0:
        raise ConfigError("--attack-prompts must be >= 0")
    for name in ("forget_prompts", "prompts_per_class", "images_per_prompt", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    options = DemoOptions(tasks=tasks, forget_prompts=args.forget_prompts,
                          prompts_per_class=args.prompts_per_class,
                          images_per_prompt=args.images_per_prompt, steps=args.steps,
                          attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()),
                          attack_prompts=args.attack_prompts,
                          progress=not args.quiet)
    started = time.perf_counter()
    metrics = run_demo(args.out, options)
    for task in tasks:
        print(f"\n== {task} ==")
        print_summary(args.out / "runs" / task)
    print(f"\nwrote {metrics} and a report per task under {args.out / 'runs'} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0

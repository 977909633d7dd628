"""`igmu attack`: search adversarial prompts against unlearned models; images for `evaluate`."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from igmu.cli.options import (
    add_sampling_overrides,
    add_threads,
    apply_threads,
    natural_int,
    positive_int,
)
from igmu.core.errors import ConfigError, IGMUError
from igmu.core.files import check_writable
from igmu.core.threads import threads_restored

DESCRIPTION = (
    "Attack an unlearned model: for each of the first K forget prompts of a task, search an "
    "adversarial prompt under which the method's model draws the erased concept again, against "
    "the model as it is sampled (NEGPROMPT: ORG's weights with the concept as negative prompt). "
    "Writes DIR/attacks.jsonl (one row per method, attack and prompt: the prompt, the "
    "adversarial prompt or token ids or embedding file, seed, budget, steps, final loss, wall "
    "seconds, fingerprints) and generates the attack images into DIR's content-addressed cache "
    "and DIR/manifest.jsonl as prompt set attack.<name>, so that `igmu evaluate` scores them "
    "(attack_success_rate.<attack>.<detector>, beside the pre-attack rate on the same prompts). "
    "Generate the forget images into the same DIR for the pre-attack rate. Each prompt's result "
    "is written atomically: interrupt at any time (even kill -9) and rerun to finish."
)


def _epilog() -> str:
    from igmu.attacks.base import ATTACKS

    lines = ["attacks (--budget counts):"]
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        text = (f"{name}: {attack.summary} [budget = {attack.budget_unit}, default "
                f"{attack.defaults['budget']}]")
        lines.append(textwrap.fill(text, 88, initial_indent="  ", subsequent_indent="    "))
    lines.append(textwrap.fill(
        "example: igmu generate --task mini_object --method ORG,NEGPROMPT --out gen/obj "
        "--models models.yaml --prompt-sets forget --max-prompts-per-class 4 && "
        "igmu attack --task mini_object --method ORG,NEGPROMPT --attack text_grad,seed_search "
        "--out gen/obj --models models.yaml --prompts 4 && igmu evaluate --task mini_object "
        "--images gen/obj/manifest.jsonl --layout manifest --out runs/obj --models models.yaml",
        88, subsequent_indent="  "))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="built-in task name or task YAML path")
    parser.add_argument("--method", required=True,
                        help="method name(s), comma-separated: ORG, NEGPROMPT or a 'methods' "
                        "entry of the models file")
    parser.add_argument("--attack", required=True,
                        help="attack name(s), comma-separated (listed below)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder for attacks.jsonl, images/ and manifest.jsonl")
    parser.add_argument("--models", type=Path, metavar="FILE",
                        help="models file (YAML) with 'generator' and 'methods'; see `igmu models`")
    parser.add_argument("--prompts", type=positive_int, default=4, metavar="K",
                        help="attack the first K forget prompts (default 4)")
    parser.add_argument("--budget", type=positive_int, metavar="N",
                        help="per attack: optimisation steps (text_grad, textual_inversion), "
                        "generations (concept_vector) or extra seeds (seed_search); default: "
                        "each attack's own")
    parser.add_argument("--seed", type=natural_int, default=0, metavar="S",
                        help="the attacks' random seed (default 0)")
    parser.add_argument("--images-per-prompt", type=positive_int, metavar="N",
                        help="attack images per prompt for the optimising attacks, seeds 0..N-1 "
                        "(default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                        help="an attack setting, repeatable, e.g. --set text_grad.tokens=3")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_sampling_overrides(parser)
    add_threads(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "attack",
        help="search adversarial prompts against unlearned models (robustness; resumable)",
        description=textwrap.fill(DESCRIPTION, 88),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    from igmu.attacks.base import get_attack

    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or not name.strip() or not key.strip():
            raise ConfigError(f"--set {item!r}: expected ATTACK.KEY=VALUE, e.g. text_grad.tokens=3")
        attack = get_attack(name)  # unknown attack names fail with "did you mean"
        settings.setdefault(attack.name, {})[key.strip()] = value.strip()
    return settings


def run(args: argparse.Namespace) -> int:
    from igmu.attacks.engine import AttackOptions, run_attacks
    from igmu.backbones.config import load_models_config
    from igmu.generation.plan import SettingOverrides
    from igmu.tasks import load_task

    apply_threads(args)
    check_writable(args.out, "--out")
    task = load_task(args.task)
    models = load_models_config(args.models, task)
    options = AttackOptions(
        methods=_split(args.method),
        attacks=_split(args.attack),
        prompts=args.prompts,
        budget=args.budget,
        seed=args.seed,
        images_per_prompt=args.images_per_prompt,
        device=args.device,
        settings=parse_sets(args.set),
        overrides=SettingOverrides(args.steps, args.guidance, args.height, args.width),
        progress=not args.quiet,
    )
    result = run_attacks(task, args.out, models, options)
    print(f"{len(result.rows)} attack results ({result.computed} computed, {result.cached} "
          f"cached) -> {result.attacks_path}; images -> {result.manifest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m igmu.cli.attack_cmd ARGS`: the same command outside `igmu`."""
    parser = argparse.ArgumentParser(prog="igmu attack",
                                     description=textwrap.fill(DESCRIPTION, 88),
                                     epilog=_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with threads_restored():
            return run(args)
    except IGMUError as exc:
        print(f"igmu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("igmu: interrupted; finished prompts are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""How a method's MiniWorld defaults are chosen: a grid of settings, judged on the task's
*training* prompts only (its ``unlearning.erase`` prompts and ``unlearning.preserve`` prompts,
never an evaluated prompt set), with the unlearning's wall time.

    python benchmarks/method_defaults.py --method CA --task mini_object \\
        --grid lr=8e-6,1e-4,3e-4 --grid steps=200 --threads 2

prints one line per setting: erase residual (share of erase prompts whose image the task's
judge flags; lower is better), preserve accuracy (share of preserve prompts drawn with every
factor right; higher is better) and seconds, beside ORG's. ``--jsonl FILE`` appends each line
as JSON. Each grid point is unlearned into a temporary folder (or ``--keep DIR``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path


def parse_grid(items: list[str]) -> list[dict[str, str]]:
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid {item!r}: give KEY=V1,V2,...")
        axes.append([(key.strip(), v.strip()) for v in values.split(",") if v.strip()])
    return [dict(point) for point in itertools.product(*axes)] if axes else [{}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--task", default="mini_object")
    parser.add_argument("--grid", action="append", default=[], help="KEY=V1,V2 (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every point")
    parser.add_argument("--prompts", type=int, default=16, help="erase and preserve prompts each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jsonl", type=Path)
    parser.add_argument("--keep", type=Path, help="keep each output under this folder")
    parser.add_argument("--no-org", action="store_true", help="skip ORG's line")
    args = parser.parse_args(argv)

    import torch

    from igmu.backbones.config import default_models_config
    from igmu.methods import get_method
    from igmu.tasks import load_task
    from igmu.testing.method_checks import load_sampled, training_rates

    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    if task.unlearning is None:
        raise SystemExit(f"task {task.name} has no unlearning section (no training prompts)")
    base = str(default_models_config(task).get("generator")["model"])
    fixed = dict(item.split("=", 1) for item in args.set)
    points = parse_grid(args.grid)
    print(f"{args.method} on {task.name} training prompts; {len(points)} settings; "
          f"{args.threads} threads; {torch.__version__}", flush=True)
    rows = []
    if not args.no_org:
        rates = training_rates(load_sampled(Path(base), task), task, args.prompts)
        rows.append({"method": "ORG", "settings": {}, **rates, "seconds": 0.0})
        print(f"ORG: erase residual {rates['erase_residual']:.3f}, preserve accuracy "
              f"{rates['preserve_accuracy']:.3f}", flush=True)
    method = get_method(args.method)
    with tempfile.TemporaryDirectory(prefix="igmu-method-defaults-") as scratch:
        root = args.keep or Path(scratch)
        for number, point in enumerate(points):
            settings = {"progress": False, **fixed, **point}
            out = root / f"{method.name}-{number}"
            started = time.perf_counter()
            result = method.apply(base, task, settings, out)
            seconds = time.perf_counter() - started
            rates = training_rates(load_sampled(out, task), task, args.prompts)
            row = {"method": method.name, "task": task.name, "settings": {**fixed, **point},
                   **rates, "seconds": round(seconds, 1),
                   "hyperparameters": result.card["hyperparameters"]}
            rows.append(row)
            shown = " ".join(f"{k}={v}" for k, v in {**fixed, **point}.items()) or "defaults"
            print(f"{shown}: erase residual {rates['erase_residual']:.3f}, preserve accuracy "
                  f"{rates['preserve_accuracy']:.3f}, {seconds:.0f} s", flush=True)
            if args.jsonl:
                with args.jsonl.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

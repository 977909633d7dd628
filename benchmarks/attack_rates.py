"""Pre-attack rate and attack success rate per attack on the MiniWorld, with Wilson intervals.

For each MiniWorld task: erase the concept from the shipped model with UCE and ESD (the demo's
settings), generate every method's forget images (2 per prompt, as the demo), run `igmu attack`'s
engine on the first K forget prompts, and score the attack images with the task's MiniWorld
judge through the attack_success_rate metric (prompts as the unit). RETRAIN (the model trained
without the concept) is attacked where the world ships it for the task, and skipped elsewhere.
Prints one line per (task, method, attack) and writes DIR/attack_rates.json.

    python benchmarks/attack_rates.py --out runs/attack-rates --prompts 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METHODS = ("ORG", "NEGPROMPT", "UCE", "ESD", "RETRAIN")
ATTACKS = ("seed_search", "text_grad", "concept_vector", "textual_inversion")
TASKS = ("mini_object", "mini_style", "mini_attribute")


def unlearned(method: str, task, base: Path, folder: Path) -> Path:
    from igmu.methods import unlearn

    out = folder / method
    if not (out / "igmu_method.json").is_file():
        settings = {"progress": False, "overwrite": True}
        if method == "ESD":  # the demo's ESD for this world (igmu.miniworld.demo)
            settings.update(steps=100, lr=3e-4, ddim_steps=10, guidance=2.0)
        unlearn(method, str(base), task, out, settings)
    return out


def paired_from_manifest(path: Path):
    from igmu.core.records import ImageKey, ImageRecord
    from igmu.evaluation.pairing import PairedSet
    from igmu.generation import read_rows

    images: dict = {}
    for row in read_rows(path):
        key = ImageKey(row["prompt_set"], row["class_name"], int(row["prompt_index"]),
                       int(row["seed"]))
        record = ImageRecord(row["method"], key, row["prompt"], str(path.parent / row["path"]))
        images.setdefault(row["method"], {}).setdefault(row["prompt_set"], {})[key] = record
    methods = ["ORG", *sorted(m for m in images if m != "ORG")]
    return PairedSet("ORG", methods, images)


class Verdicts:
    """The metric's context: verdicts of one detector, each image judged once."""

    def __init__(self, paired, detector) -> None:
        import numpy as np
        from PIL import Image

        self.paired = paired
        records = paired.all_records()
        images = [np.asarray(Image.open(r.path).convert("RGB")) for r in records]
        raws = detector.analyse(images) if images else []
        self.verdicts = {r.path: detector.verdict(raw) for r, raw in zip(records, raws,
                                                                           strict=True)}

    def verdict(self, detector, record):
        return self.verdicts[record.path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/attack-rates"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from igmu.attacks.engine import AttackOptions, run_attacks
    from igmu.attacks.store import read_attack_rows
    from igmu.backbones.config import load_models_config
    from igmu.detectors.base import build_detector
    from igmu.generation import GenerateOptions, generate
    from igmu.metrics.attack_success_rate import build as build_metric
    from igmu.miniworld.shipped import shipped_models
    from igmu.tasks import load_task
    from igmu.workflows.demo import DemoOptions, write_models_file

    torch.set_num_threads(args.threads)
    t2i, _ = shipped_models()
    from igmu.miniworld.retrain import retrain_model_dir

    report = []
    for name in args.tasks.split(","):
        task = load_task(name)
        folder = args.out / name
        methods = args.methods.split(",")
        if "RETRAIN" in methods and retrain_model_dir(name) is None:
            print(f"{name}: no RETRAIN model ships for this task; skipped", file=sys.stderr)
            methods.remove("RETRAIN")
        trained = {m: str(unlearned(m, task, t2i, folder / "models"))
                   for m in methods if m in ("UCE", "ESD")}
        models_file = write_models_file(folder / "models.yaml", trained, DemoOptions(), name)
        models = load_models_config(models_file)
        images = folder / "images"
        generate(task, images, models, GenerateOptions(
            methods=methods, images_per_prompt=2, prompt_sets=["forget"],
            max_prompts_per_class=args.prompts, progress=False))
        started = time.perf_counter()
        result = run_attacks(task, images, models, AttackOptions(
            methods=methods, attacks=args.attacks.split(","), prompts=args.prompts,
            budget=args.budget, progress=False))
        seconds = time.perf_counter() - started
        attack_rows = read_attack_rows(images / "attacks.jsonl")
        paired = paired_from_manifest(images / "manifest.jsonl")
        detector = build_detector(task.guidance["detectors"][0], models)
        providers = argparse.Namespace(concept_detectors=lambda d=detector: [d])
        ctx = Verdicts(paired, detector)
        for metric in build_metric(task, providers, paired):
            for res in (r.aggregate for r in metric.compute(ctx)):
                rows = [r for r in attack_rows
                        if r["method"] == res.method and r["attack"] == metric.attack]
                entry = {"task": name, "method": res.method, "metric": res.metric,
                         "value": res.value, "ci": [res.ci_low, res.ci_high], "n": res.n,
                         "seconds_per_prompt": sum(r["wall_seconds"] for r in rows) / len(rows),
                         "cpu_seconds_per_prompt": sum(r["cpu_seconds"] for r in rows) / len(rows)}
                report.append(entry)
                print(f"{name:15s} {res.method:10s} {res.metric:45s} {res.value:6.1%} "
                      f"[{res.ci_low:5.1%}, {res.ci_high:5.1%}] n={res.n}", flush=True)
        print(f"{name}: attacks took {seconds:.0f} s ({result.computed} computed)",
              file=sys.stderr)
    (args.out / "attack_rates.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

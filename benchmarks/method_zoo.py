"""Every built-in unlearning method on the MiniWorld, beside ORG, NEGPROMPT and RETRAIN: each
method at its MiniWorld defaults (ESD at the demo's settings), then the demo's generation and the
full five-aspect evaluation, one table per task.

    python benchmarks/method_zoo.py --tasks mini_object --out /tmp/zoo --threads 2
    python benchmarks/method_zoo.py --tasks mini_object,mini_style,mini_attribute \\
        --attacks text_grad,seed_search --out /tmp/zoo

prints, per method: the residual rate on forget prompts, multilingual and paraphrased prompts,
prompt accuracy on unrelated and related prompts (preservation), FID against the world's true
images (fidelity), CLIP score (alignment), each with its 95% interval, the best attack's
success rate when ``--attacks`` is given, and the unlearning's cost (the efficiency aspect, from
the method card: wall seconds, share of parameters changed or added). The run folder holds
every image, each task's metrics.csv and report.html. Unlearned models are reused on a rerun
(same settings, same key).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ESD_SETTINGS = {"steps": 100, "lr": 3e-4, "ddim_steps": 10, "guidance": 2.0}
COLUMNS = (
    ("forget", "forgetting", "residual_rate."),
    ("multilingual", "robustness", "multilingual_residual_rate."),
    ("paraphrase", "robustness", "paraphrase_residual_rate."),
    ("unrelated acc", "preservation", "prompt_accuracy.unrelated"),
    ("related acc", "preservation", "prompt_accuracy.related"),
    ("fid_world", "fidelity", "fid_world"),
    ("clip_score", "alignment", "clip_score"),
    ("unlearn s", "efficiency", "unlearn_wall_seconds"),
    ("param share", "efficiency", "unlearn_parameter_share"),
)


def cell(rows: list[dict[str, str]], aspect: str, prefix: str) -> str:
    for row in rows:
        if row["aspect"] == aspect and row["metric"].startswith(prefix) and (
                "corrected" not in row["metric"]):
            value, low, high = (float(row[k] or "nan") for k in ("value", "ci_low", "ci_high"))
            if aspect == "efficiency":  # one measurement, no interval
                return f"{value:.3g}"
            if prefix.endswith("rate.") or "accuracy" in prefix:
                return f"{value:.0%} [{low:.0%}, {high:.0%}]"
            return f"{value:.4g} [{low:.4g}, {high:.4g}]"
    return "-"


def best_attack(rows: list[dict[str, str]]) -> str:
    found = [r for r in rows if r["metric"].startswith("attack_success_rate.")]
    if not found:
        return "-"
    row = max(found, key=lambda r: float(r["value"]))
    name = row["metric"].split(".")[1]
    return f"{float(row['value']):.0%} ({name}, n={row['n']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mini_object")
    parser.add_argument("--methods", default="all", help="comma-separated, or all")
    parser.add_argument("--attacks", default="", help="e.g. text_grad,seed_search")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from igmu.backbones.config import load_models_config
    from igmu.core.constants import NEGPROMPT, ORG, RETRAIN
    from igmu.evaluation.engine import EvaluationOptions, evaluate
    from igmu.generation import GenerateOptions, generate
    from igmu.methods import METHODS, read_method_card
    from igmu.miniworld.shipped import shipped_models
    from igmu.report.data import load_report_data
    from igmu.report.page import render_html
    from igmu.tasks import load_task
    from igmu.workflows.demo import DemoOptions, _unlearned, write_models_file

    torch.set_num_threads(args.threads)
    options = DemoOptions(progress=not args.quiet)
    trained = [m for m in METHODS.names() if m not in (ORG, NEGPROMPT)]
    if args.methods != "all":
        trained = [METHODS.get(m.strip()).name for m in args.methods.split(",") if m.strip()]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    t2i, _ = shipped_models()
    print(f"methods: {', '.join(trained)}; {args.threads} threads; torch {torch.__version__}")
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = load_task(name)
        folders, cost = {}, {}
        for method in trained:
            started = time.perf_counter()
            settings = {"progress": False, **(ESD_SETTINGS if method == "ESD" else {})}
            folders[method] = _unlearned(method, t2i, task, args.out / "models" / name, settings)
            card = read_method_card(folders[method])
            cost[method] = card.get("cost") or {}
            print(f"[{name}] {method}: {cost[method].get('wall_seconds')} s "
                  f"({time.perf_counter() - started:.0f} s with loading)", flush=True)
        models_file = write_models_file(args.out / "models" / name / "models.yaml", folders,
                                        options, name)
        models = load_models_config(models_file)
        methods = [ORG, *trained, NEGPROMPT]
        if RETRAIN in models.get("methods"):
            methods.append(RETRAIN)
        main_sets = ["forget", "stripped"] if task.reference == "stripped" else ["forget"]
        other_sets = [s for s in ("unrelated", "related", "multilingual", "paraphrase")
                      if s in task.prompt_sets]
        for sets, per_class, images in (
                (main_sets, options.forget_prompts, options.forget_images_per_prompt),
                (other_sets, options.prompts_per_class, options.images_per_prompt)):
            generated = generate(task, args.out / "images" / name, models, GenerateOptions(
                methods=methods, images_per_prompt=images, prompt_sets=sets,
                max_prompts_per_class=per_class, batch_size=options.batch_size,
                pipeline_batching=True, progress=options.progress))
        if attacks:
            from igmu.attacks.engine import AttackOptions, run_attacks

            run_attacks(task, args.out / "images" / name, models, AttackOptions(
                methods=methods, attacks=attacks, prompts=options.attack_prompts,
                progress=options.progress,
                settings={a: dict(v) for a, v in options.attack_settings.items()
                          if a in attacks}))
        run_dir = args.out / "runs" / name
        evaluate(task, generated.manifest, run_dir, models, EvaluationOptions(
            layout="manifest", store_path=args.out / "igmu.sqlite", progress=options.progress))
        html, _ = render_html(load_report_data(run_dir))
        (run_dir / "report.html").write_text(html, encoding="utf-8")
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        heads = [c[0] for c in COLUMNS] + (["best attack"] if attacks else [])
        lines = [f"\n{name}\n", "| method | " + " | ".join(heads) + " |",
                 "|" + "---|" * (len(heads) + 1)]
        for method in methods:
            own = [r for r in rows if r["method"] == method]
            cells = [cell(own, aspect, prefix) for _, aspect, prefix in COLUMNS]
            if attacks:
                cells.append(best_attack(own))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        print("\n".join(lines), flush=True)
        (run_dir / "zoo_table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (run_dir / "zoo_cost.json").write_text(json.dumps(cost, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

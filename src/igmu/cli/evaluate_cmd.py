"""`igmu evaluate`: score every method's images across the IGMU aspects."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from igmu.cli.options import add_threads, apply_threads
from igmu.core.constants import ORG
from igmu.core.files import check_writable


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score unlearned models' images (forgetting, fidelity, preservation, ...)",
        description="Score each method's images against the original model's (ORG), paired by "
        "key, never by file order. Writes metrics.csv, samples.csv and run.json into --out and "
        "all records into the workspace store (SQLite).",
    )
    parser.add_argument("--task", required=True, help="built-in task name or task YAML path")
    parser.add_argument(
        "--images",
        required=True,
        type=Path,
        help="IGMU layout folder (<concept>/ with forgot/, remove_word/, "
        "unrelated/) or a JSONL manifest (e.g. written by `igmu generate`)",
    )
    parser.add_argument(
        "--layout",
        choices=["auto", "igmu", "manifest"],
        default="auto",
        help="how to read --images (default auto: a file is a manifest, a folder an IGMU layout)",
    )
    parser.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="score manifest paths outside the manifest's folder (and links out of an IGMU "
        "layout); refused by default because reports embed every scored image",
    )
    parser.add_argument("--out", required=True, type=Path, help="run folder to write")
    parser.add_argument(
        "--models",
        type=Path,
        help="models file (YAML); see `igmu models` (default: the task's world's shipped "
        "models for MiniWorld tasks, else the built-in defaults)",
    )
    parser.add_argument(
        "--store", type=Path, help="SQLite store (default: igmu.sqlite beside the run folder)"
    )
    parser.add_argument(
        "--reference-method",
        default=ORG,
        help="the original, un-unlearned model's method name (default ORG)",
    )
    parser.add_argument(
        "--igmu-prompts",
        type=Path,
        help="folder with IGMU's forgot.json/retain.json the images were made "
        "from (their i_j_k names index these prompts)",
    )
    parser.add_argument("--metrics", help="comma-separated metrics (default: the task's)")
    parser.add_argument(
        "--detectors",
        help="comma-separated detectors (default: the task's), "
        "e.g. clip_head:nudity,nudenet,opennsfw",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the intersection of keys, skip images that cannot be read or decoded, "
        "and record everything left out (run.json, the table)",
    )
    parser.add_argument(
        "--allow-odd-sizes",
        action="store_true",
        help="score images with a side under 16 px, an aspect ratio over 4:1 or another size "
        "than the rest of their prompt set (refused by default; run.json lists them)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16,
        help="images read and decoded at once (default 16); networks always run on calls of "
        "8, so scores do not depend on it",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device for CLIP, LPIPS and Inception: cpu (default), cuda, cuda:N",
    )
    add_threads(parser)
    parser.add_argument(
        "--timings",
        action="store_true",
        help="print where the time went (stages, each network); always in run.json",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    from igmu.backbones.config import load_models_config
    from igmu.evaluation.engine import EvaluationOptions, evaluate
    from igmu.tasks import load_task
    from igmu.tasks.igmu_json import with_igmu_prompts

    apply_threads(args)
    check_writable(args.out, "--out")
    check_writable(args.store or args.out.resolve().parent / "igmu.sqlite", "--store",
                   folder=False)
    task = load_task(args.task)
    if args.igmu_prompts:
        task = with_igmu_prompts(task, args.igmu_prompts)
    models = load_models_config(args.models, task)
    options = EvaluationOptions(
        layout=args.layout,
        allow_outside_paths=args.allow_outside_paths,
        reference_method=args.reference_method,
        allow_missing=args.allow_missing,
        allow_odd_sizes=args.allow_odd_sizes,
        metrics=_split(args.metrics),
        detectors=_split(args.detectors),
        batch_size=args.batch_size,
        bootstrap_seed=args.seed,
        store_path=args.store,
        progress=not args.quiet,
        device=args.device,
    )
    result = evaluate(task, args.images, args.out, models, options)
    print_summary(args.out)
    if args.timings:
        print("timings:")
        print(result.timings.table())
    for line in result.left_out:
        print(f"left out: {line}")
    print(
        f"run {result.run_id}: {args.out / 'metrics.csv'}, {args.out / 'samples.csv'}; "
        f"store {result.store_path}"
    )
    return 0


def _cell(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4g}"


def print_table(results: list) -> None:
    """The detailed table: by aspect (forgetting first), metric, then method (the reference
    first), the same order in `igmu evaluate` and `igmu demo`."""
    from igmu.core.records import REPORTED_ASPECTS

    methods = sorted({r.method for r in results}, key=lambda m: (m != ORG, m))
    results = sorted(results, key=lambda r: (REPORTED_ASPECTS.index(r.aspect), r.metric,
                                             methods.index(r.method)))
    rows = [("aspect", "metric", "method", "value", "95% CI", "n", "")]
    for r in results:
        arrow = "higher=better" if r.higher_is_better else "lower=better"
        rows.append(
            (
                r.aspect,
                r.metric,
                r.method,
                _cell(r.value),
                f"[{_cell(r.ci_low)}, {_cell(r.ci_high)}]",
                str(r.n),
                arrow,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_summary(run_dir: Path) -> None:
    """The verdict first, then the detailed table and the warnings, grouped by cause."""
    from igmu.report.data import load_report_data
    from igmu.report.leaderboard import grouped_warnings
    from igmu.report.verdict import stored_verdict
    from igmu.report.verdict_render import verdict_text

    data = load_report_data(run_dir)
    print(f"Verdict ({data.task}):")
    print(verdict_text(stored_verdict(data)))
    print()
    print_table(data.aggregates)
    for cause, items in grouped_warnings(data).items():
        print(f"warning: {cause}: {', '.join(items)}")
    for item in data.run_file.get("not_computed", []):
        print(f"not computed: {item['metric']} (it needs {item['needs']})")
    for note in data.run_file.get("metric_notes", []):
        print(f"note: {note}")

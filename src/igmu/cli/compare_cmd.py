"""`igmu compare`: a paired comparison of two methods of one run, on every metric."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from igmu.core.intervals import MIN_PROMPTS

DESCRIPTION = (
    "Compare two methods of one evaluated run, metric by metric, on the images they share by key "
    "(prompt set, class, prompt, seed). Each row is the difference A - B with a 95% interval "
    "that treats a prompt, not an image, as the unit; 'A better' / 'B better' only when the "
    "interval excludes no difference (each metric on its own: no multiplicity adjustment)."
)
EPILOG = "example: igmu compare runs/demo/runs/mini_object --a UCE --b ESD"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="paired comparison of two methods of a run, every metric",
        description=DESCRIPTION, epilog=EPILOG,
    )
    parser.add_argument("run_dir", type=Path, help="run folder written by `igmu evaluate`")
    parser.add_argument("--a", required=True, metavar="METHOD", help="first method")
    parser.add_argument("--b", required=True, metavar="METHOD", help="second method")
    parser.add_argument("--out", type=Path, help="also write the rows as CSV ('-' = stdout)")
    parser.set_defaults(handler=run)


def _num(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.4g}"


def run(args: argparse.Namespace) -> int:
    from igmu.core.errors import ConfigError
    from igmu.core.registry import did_you_mean
    from igmu.evaluation.compare import compare_methods
    from igmu.store.runs import load_run

    stored = load_run(args.run_dir)
    for option, method in (("--a", args.a), ("--b", args.b)):
        if method not in stored.methods:
            raise ConfigError(
                f"{option} {method!r}: run {stored.run_id} has no method {method!r}."
                f"{did_you_mean(method, stored.methods)}"
            )
    if args.a == args.b:
        raise ConfigError("--a and --b name the same method")
    rows = []
    for d in compare_methods(stored, args.a, args.b):
        verdict = d.note or (f"{d.better} better" if d.better else (
            f"cannot be decided: {d.prompts} prompt" if 0 < d.prompts < MIN_PROMPTS
            else "not distinguishable"))
        rows.append({
            "metric": d.metric, "aspect": d.aspect,
            "direction": "higher" if d.higher_is_better else "lower",
            "a": _num(stored.aggregate(args.a, d.metric).value),
            "b": _num(stored.aggregate(args.b, d.metric).value),
            "difference": _num(d.value), "ci_low": _num(d.ci_low), "ci_high": _num(d.ci_high),
            "pairs": str(d.n), "prompts": str(d.prompts), "verdict": verdict,
        })
    if not rows:
        raise ConfigError(f"methods {args.a} and {args.b} share no scored image in this run")
    columns = list(rows[0])
    if args.out is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if str(args.out) == "-":
            sys.stdout.write(buffer.getvalue())
            return 0
        args.out.write_text(buffer.getvalue(), encoding="utf-8")
    header = {c: c for c in columns} | {"a": args.a, "b": args.b, "difference": "A - B"}
    table = [header] + [
        {**r, "ci_low": f"[{r['ci_low']}, {r['ci_high']}]"} for r in rows
    ]
    table[0]["ci_low"] = "95% CI"
    shown = [c for c in columns if c != "ci_high"]
    widths = {c: max(len(str(r[c])) for r in table) for c in shown}
    for row in table:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in shown).rstrip())
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0

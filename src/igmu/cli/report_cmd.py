"""`igmu report`: a self-contained HTML report (or a Markdown leaderboard) from a run folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from igmu.report.data import load_report_data
from igmu.report.leaderboard import markdown_table
from igmu.report.page import render_html


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="write a self-contained HTML report (or Markdown leaderboard) for a run",
        description="Read a run folder written by `igmu evaluate` (and the store it names) and "
        "write one offline HTML file: leaderboard, trade-off plots, image grids, failure "
        "browser, provenance. Images of NSFW tasks are blurred unless --show-nsfw.",
    )
    parser.add_argument(
        "run_dir",
        type=Path,
        help="run folder (holds run.json), or a folder of runs such as `igmu demo`'s output",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output file (default RUN_DIR/report.html or report.md); '-' prints to stdout",
    )
    parser.add_argument("--format", choices=["html", "md"], default="html")
    parser.add_argument("--show-nsfw", action="store_true", help="do not blur images of NSFW tasks")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=50,
        help="prompt keys shown per prompt set in the image grids (default 50)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from igmu.errors import ConfigError
    from igmu.store.runs import find_run_dirs

    run_dirs = find_run_dirs(args.run_dir)
    if len(run_dirs) > 1 and args.out is not None and str(args.out) != "-":
        raise ConfigError(
            f"{args.run_dir} holds {len(run_dirs)} runs; --out names one file (use '-' or "
            "leave it out: each run's report is written into its own folder)"
        )
    for run_dir in run_dirs:
        write_report(run_dir, args)
    return 0


def write_report(run_dir: Path, args: argparse.Namespace) -> None:
    data = load_report_data(run_dir)
    if args.format == "md":
        text = markdown_table(data)
    else:
        text, problems = render_html(data, show_nsfw=args.show_nsfw, max_rows=args.max_rows)
        for problem in problems:
            print(f"igmu: warning: {problem}", file=sys.stderr)
    if args.out is not None and str(args.out) == "-":
        sys.stdout.write(text)
        return
    out = args.out or run_dir / ("report.md" if args.format == "md" else "report.html")
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")

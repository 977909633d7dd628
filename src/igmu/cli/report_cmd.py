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
    parser.add_argument("run_dir", type=Path, help="run folder (holds run.json)")
    parser.add_argument(
        "--out", type=Path, help="output file (default RUN_DIR/report.html or report.md)"
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
    data = load_report_data(args.run_dir)
    out = args.out or args.run_dir / ("report.md" if args.format == "md" else "report.html")
    if args.format == "md":
        text = markdown_table(data)
    else:
        text, problems = render_html(data, show_nsfw=args.show_nsfw, max_rows=args.max_rows)
        for problem in problems:
            print(f"igmu: warning: {problem}", file=sys.stderr)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0

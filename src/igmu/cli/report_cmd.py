"""`igmu report`: a self-contained HTML report (or a Markdown leaderboard) from a run folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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
        help="run folder (holds run.json), or a folder of runs such as `igmu demo`'s output "
        "(one report with a tab per run)",
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
    from igmu.report.data import load_report_data
    from igmu.report.page import render_html
    from igmu.store.runs import find_run_dirs

    run_dirs = find_run_dirs(args.run_dir)
    datas = [load_report_data(d) for d in run_dirs]
    if args.format == "md":
        text = "\n".join(markdown_report(data) for data in datas)
    else:
        text, problems = render_html(
            datas if len(datas) > 1 else datas[0], show_nsfw=args.show_nsfw,
            max_rows=args.max_rows,
        )
        for problem in problems:
            print(f"igmu: warning: {problem}", file=sys.stderr)
    if args.out is not None and str(args.out) == "-":
        sys.stdout.write(text)
        return 0
    folder = run_dirs[0] if len(run_dirs) == 1 else args.run_dir
    out = args.out or folder / ("report.md" if args.format == "md" else "report.html")
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    runs = f" ({len(run_dirs)} runs, one tab each)" if len(run_dirs) > 1 else ""
    print(f"wrote {out}{runs} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def markdown_report(data) -> str:
    """The verdict, then the detailed leaderboard, for one run."""
    from igmu.report.leaderboard import markdown_table
    from igmu.report.markdown import md_escape
    from igmu.report.verdict import stored_verdict
    from igmu.report.verdict_render import verdict_markdown

    return (
        f"## {md_escape(data.task)}\n\n### Verdict\n\n{verdict_markdown(stored_verdict(data))}\n"
        f"### Leaderboard\n\n{markdown_table(data)}"
    )

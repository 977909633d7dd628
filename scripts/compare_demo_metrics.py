"""Run `igmu demo` at two git revisions and compare their metrics.csv byte for byte.

A refactoring must not change a single number: run this before committing one.

    python scripts/compare_demo_metrics.py HEAD~1 HEAD --tasks mini_object

Each revision is checked out into a temporary git worktree and run with its own ``src`` first
on PYTHONPATH (the installed igmu is not used). Exit status 0 when the files are identical;
otherwise the differing lines are printed.
"""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_demo(revision: str, work: Path, demo_args: list[str]) -> tuple[bytes, float]:
    tree = work / f"tree-{revision.replace('/', '_').replace('~', '-')}"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision],
        check=True, capture_output=True,
    )
    try:
        out = work / f"demo-{tree.name}"
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "igmu.cli.main", "demo", "--out", str(out), "--quiet",
             *demo_args],
            check=True, env=env, cwd=tree,
        )
        return (out / "metrics.csv").read_bytes(), time.perf_counter() - started
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            check=False, capture_output=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="git revision, e.g. HEAD~1")
    parser.add_argument("after", help="git revision, e.g. HEAD")
    parser.add_argument("--tasks", default="mini_object", help="demo tasks (default mini_object)")
    parser.add_argument("--forget-prompts", default="6")
    parser.add_argument("--prompts-per-class", default="2")
    args = parser.parse_args(argv)
    demo_args = ["--tasks", args.tasks, "--forget-prompts", args.forget_prompts,
                 "--prompts-per-class", args.prompts_per_class]
    with tempfile.TemporaryDirectory(prefix="igmu-compare-") as tmp:
        before, t0 = run_demo(args.before, Path(tmp), demo_args)
        after, t1 = run_demo(args.after, Path(tmp), demo_args)
    print(f"{args.before}: {len(before)} bytes in {t0:.0f} s; {args.after}: {len(after)} bytes "
          f"in {t1:.0f} s")
    if before == after:
        print("metrics.csv identical")
        return 0
    diff = difflib.unified_diff(
        before.decode().splitlines(), after.decode().splitlines(), args.before, args.after,
        lineterm="",
    )
    print("\n".join(diff))
    return 1


if __name__ == "__main__":
    sys.exit(main())

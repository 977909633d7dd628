"""Wall time of `igmu demo` from nothing (target: <= 5 minutes on 2 CPU cores).

Runs the demo's default schedule into a fresh temporary folder (no cached models, images or
scores), then a second time into the same folder (everything cached), and prints the time of each
stage per task and the totals.

    python benchmarks/demo_time.py [--threads N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--keep", type=Path, help="write the demo here and keep it")
    args = parser.parse_args()

    import torch

    from igmu.workflows.demo import DemoOptions, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.keep or Path(tempfile.mkdtemp(prefix="igmu-demo-time-"))
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: the first run must start from nothing")
    try:
        runs = []
        for label in ("cold", "warm"):
            started = time.perf_counter()
            run_demo(out, DemoOptions(progress=False))
            runs.append((label, time.perf_counter() - started))
            timing = json.loads((out / "demo_timing.json").read_text(encoding="utf-8"))
            print(f"\n{label} run: stages per task (seconds)")
            stages = list(next(iter(timing.values())))
            print(f"{'task':16}" + "".join(f"{s:>21}" for s in stages))
            for task, row in timing.items():
                print(f"{task:16}" + "".join(f"{row[s]:>21.1f}" for s in stages))
        print()
        print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
        for label, seconds in runs:
            print(f"{label:5} igmu demo: {seconds:6.1f} s ({seconds / 60:.2f} min)")
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

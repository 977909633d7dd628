"""Print how often igmu's 95% intervals contain the truth in simulated runs (the table of
docs/design/metrics-and-intervals.md). numpy only; about a minute on 2 cores.

    python benchmarks/interval_coverage.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import platform
import time

from igmu.metrics.coverage import mean_coverage, rate_coverage

RATES = [(16, 2, 0.5, 0.3), (16, 2, 0.1, 0.3), (30, 3, 0.3, 0.5), (10, 2, 0.5, 0.0),
         (50, 2, 0.05, 0.2), (16, 2, 0.9, 0.6), (8, 4, 0.5, 0.5)]
MEANS = [(16, 2, None, False), (6, 1, None, False), (9, 1, 3, False), (18, 2, 3, False),
         (30, 2, None, True), (12, 2, None, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{args.runs} simulated runs per setting; machine: {platform.processor() or '?'}, "
          f"{platform.machine()}")
    print("rate: prompts x seeds, true rate, intra-prompt correlation -> coverage "
          "(images as independent units)")
    for prompts, seeds, rate, icc in RATES:
        ours = rate_coverage(prompts, seeds, rate, icc, args.runs)
        naive = rate_coverage(prompts, seeds, rate, icc, args.runs, clustered=False)
        print(f"  {prompts:>3} x {seeds}  p={rate:<4} icc={icc:<3} -> {ours:.3f} ({naive:.3f})")
    print("mean: prompts x seeds, classes, distribution -> coverage")
    for prompts, seeds, strata, skewed in MEANS:
        coverage = mean_coverage(prompts, seeds, args.runs, strata, skewed)
        kind = "log-normal" if skewed else "normal"
        print(f"  {prompts:>3} x {seeds}  classes={strata or 1}  {kind:<10} -> {coverage:.3f}")
        if skewed:  # positive values: the same interval cut to [0, inf), as LPIPS's and CSDR's
            cut = mean_coverage(prompts, seeds, args.runs, strata, skewed,
                                domain=(0.0, float("inf")))
            print(f"  {prompts:>3} x {seeds}  classes={strata or 1}  {kind:<10} cut to [0, inf)"
                  f" -> {cut:.3f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

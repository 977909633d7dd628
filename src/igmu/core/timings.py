"""Where a command's time goes: named stages, summed, for run.json and `--timings`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}

    def table(self) -> str:
        total = sum(v for k, v in self.seconds.items() if "/" not in k)
        width = max((len(k) for k in self.seconds), default=5)
        lines = [f"{name.ljust(width)}  {value:8.2f} s" for name, value in self.seconds.items()]
        return "\n".join(lines + [f"{'total'.ljust(width)}  {total:8.2f} s"])

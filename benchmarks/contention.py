"""One or more busy processes beside a benchmark: the contended case next to the idle one.

Each busy process spins single-threaded float32 matrix products (what another user's job does to
the cores and the memory bus) until the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Iterator


def _spin(stop) -> None:  # type: ignore[no-untyped-def]
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    while not stop.is_set():
        a = (a @ a) * 1e-3 + 1.0


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """Run ``count`` busy processes while the block runs (0: none)."""
    if count <= 0:
        yield
        return
    context = mp.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()

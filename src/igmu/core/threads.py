"""How many CPU threads igmu computes with, set once per command for every library.

The default is the machine's usable cores (the process's CPU affinity), fixed per machine: on
the CPU the thread count decides some pixels (kernels split reductions by thread), so it is part
of every generated image's key, and a default that followed the machine's load would make a
rerun under other load regenerate everything. On a shared machine pass ``--threads 1``: two
threads fighting a busy process were measured several times slower than one. torch, and through
the environment OpenMP/MKL/BLAS and onnxruntime sessions igmu creates, all use the same number.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_CHOSEN: int | None = None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` (default: the usable cores) in every library; returns the number."""
    global _CHOSEN
    count = int(threads) if threads else usable_cores()
    for name in ENV_VARS:
        os.environ[name] = str(count)
    # torch reads OMP_NUM_THREADS when it loads; if it is loaded already, tell it directly
    # (a command answered from the store never loads it).
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
    _CHOSEN = count
    return count


def chosen_threads() -> int | None:
    """The number set by `set_threads` in this process, if any (recorded with runs)."""
    return _CHOSEN


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Put the process's thread settings back after a command run in-process (a test or a
    notebook calling ``igmu.cli.main.main``), so one command's ``--threads`` (or its default)
    does not leak into the next computation, whose image keys name the thread count."""
    global _CHOSEN
    env = {name: os.environ.get(name) for name in ENV_VARS}
    chosen = _CHOSEN
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _CHOSEN = chosen
        torch = sys.modules.get("torch")
        if torch is not None:
            default = int(env["OMP_NUM_THREADS"]) if env["OMP_NUM_THREADS"] else usable_cores()
            torch.set_num_threads(before if before is not None else default)

"""How many CPU threads igmu computes with, set once per command for every library.

The default is the cores that are free when the command starts (the machine's usable cores
minus the other runnable threads), not the count of all cores: on a shared 2-core machine two
threads fighting another process ran several times slower than one. torch, and through the
environment OpenMP/MKL/BLAS and onnxruntime sessions igmu creates, all use the same number.
"""

from __future__ import annotations

import os
import sys

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_CHOSEN: int | None = None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def free_cores() -> int:
    """Usable cores minus the other threads runnable right now (Linux /proc/loadavg's
    instantaneous count, which includes this process); at least 1."""
    cores = usable_cores()
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, min(cores, cores - (running - 1)))


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` (default: the free cores) in every library; returns the number."""
    global _CHOSEN
    count = int(threads) if threads else free_cores()
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

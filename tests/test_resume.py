"""A run killed with SIGKILL and started again completes with the same result."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from helpers import run_cli


def _features(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_then_rerun_gives_the_same_result(church_demo: Path, tiny_models: Path,
                                                  tmp_path: Path) -> None:
    args = ["evaluate", "--task", "church", "--images", str(church_demo), "--models",
            str(tiny_models), "--batch-size", "2", "--quiet"]
    reference = tmp_path / "clean" / "run"
    run_cli(*args, "--out", reference)

    killed = tmp_path / "killed" / "run"
    store = killed.parent / "igmu.sqlite"
    process = subprocess.Popen([sys.executable, "-m", "igmu.cli.main", *args, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _features(store) < 4 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    was_running = process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert was_running, "evaluation finished before it could be killed"
    assert not (killed / "metrics.csv").exists()

    run_cli(*args, "--out", killed)
    assert (killed / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1

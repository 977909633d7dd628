"""Weights are hashed once per file version, across runs, and never served a stale hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from igmu.backbones import file_hashes


def fresh_process(monkeypatch, cache: Path) -> None:
    monkeypatch.setenv("IGMU_CACHE_DIR", str(cache))
    monkeypatch.setattr(file_hashes, "_MEMORY", {})


def test_hash_is_remembered_across_runs_and_follows_changes(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    fresh_process(monkeypatch, tmp_path / "cache")
    first = file_hashes.file_sha256(weights)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()

    reads = []
    real = file_hashes._hash
    monkeypatch.setattr(file_hashes, "_hash", lambda p: reads.append(p) or real(p))
    fresh_process(monkeypatch, tmp_path / "cache")  # a new run: memory empty, cache on disk
    assert file_hashes.file_sha256(weights) == first and reads == []

    # Same size, same modification time (as `cp -p` or a careful tool would leave it): the
    # change time still moves, so the new content is hashed.
    info = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))
    fresh_process(monkeypatch, tmp_path / "cache")
    assert file_hashes.file_sha256(weights) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert reads == [weights]


def test_unwritable_cache_only_costs_time(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"c")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    fresh_process(monkeypatch, blocked / "cache")
    assert file_hashes.file_sha256(weights) == hashlib.sha256(b"c").hexdigest()

"""sha256 of files, remembered across runs: a weights file is hashed once, not at every run.

The cache is an SQLite file in igmu's cache folder (``$IGMU_CACHE_DIR``, else
``$XDG_CACHE_HOME/igmu``, else ``~/.cache/igmu``), keyed by the file's real path, size,
modification and change times and inode. Any write to the file changes its ctime (which no
user tool can set back), so a changed file is never served a stale hash. Where the cache
cannot be written (read-only home), files are hashed every time.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

_MEMORY: dict[tuple, str] = {}


def cache_dir() -> Path:
    explicit = os.environ.get("IGMU_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "igmu"


def _stamp(path: Path) -> tuple:
    info = path.stat()
    return (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _connect() -> sqlite3.Connection | None:
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(folder / "file-sha256.sqlite"), timeout=30)
        db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT NOT NULL, size INTEGER NOT NULL, "
            "mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, "
            "sha256 TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns, ctime_ns, inode))"
        )
        return db
    except (OSError, sqlite3.Error):
        return None


def file_sha256(path: str | Path) -> str:
    """The file's sha256, from memory, the persistent cache, or (and then remembered) reading
    it."""
    stamp = _stamp(Path(path))
    if stamp in _MEMORY:
        return _MEMORY[stamp]
    db = _connect()
    try:
        if db is not None:
            row = db.execute(
                "SELECT sha256 FROM hashes WHERE path=? AND size=? AND mtime_ns=? AND "
                "ctime_ns=? AND inode=?", stamp
            ).fetchone()
            if row is not None:
                _MEMORY[stamp] = row[0]
                return row[0]
        value = _hash(Path(path))
        if db is not None:
            try:
                with db:
                    db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)",
                               (*stamp, value))
            except sqlite3.Error:
                pass  # a cache that cannot be written only costs time
        _MEMORY[stamp] = value
        return value
    finally:
        if db is not None:
            db.close()

"""Files written whole or not at all, and JSON Lines read with errors that name file and line.

``write_atomic`` writes to a temporary name in the final folder (``.<name>.<pid>.tmp``), flushes
it to disk and renames it into place, so a process killed at any moment leaves either no file or
the whole file; ``remove_stale_tmp`` deletes the temporary files of processes no longer running.
``read_jsonl`` yields each non-blank line's object with its place (``file:line``) for the
caller's own checks; ``check_writable`` refuses an output path before the work that would fill it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError

TMP_SUFFIX = ".tmp"


def temporary_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, sync_dir: bool = False) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` via a temporary file + rename; readers never
    see a part. ``sync_dir`` also flushes the folder entry (the rename survives a crash)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sync_dir:
        _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_tmp(folder: Path, recursive: bool = False) -> int:
    """Delete temporary files left by killed processes (their pid is no longer running)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = f"**/.*{TMP_SUFFIX}" if recursive else f".*{TMP_SUFFIX}"
    removed = 0
    for tmp in folder.glob(pattern):
        parts = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 1)
        if len(parts) != 2 or not parts[1].isdigit() or _pid_alive(int(parts[1])):
            continue
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def read_text(path: Path, what: str = "file") -> str:
    """A UTF-8 text file; a byte that is not UTF-8 is a ConfigError naming the file, the line
    and the byte offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: this {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8"
        ) from None


def read_jsonl(path: Path, what: str = "JSONL file") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each non-blank line of a JSON Lines file, ``where`` = ``file:line``;
    a line that is not a JSON object is a ConfigError naming the file and line."""
    text = read_text(path, what)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: each line of a {what} must be a JSON object")
        yield where, row


# Below this, a run would stop on a full disk within its first images or its store's journal.
MIN_FREE_BYTES = 64 * 1024 * 1024


def _check_free_space(path: str | Path, shown: Path, what: str) -> None:
    import shutil

    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"{what} {shown}: only {free / 2**20:.0f} MB free on its disk; igmu needs at least "
            f"{MIN_FREE_BYTES // 2**20} MB to start (free some space or write elsewhere)"
        )


def check_writable(path: str | Path, what: str, folder: bool = True) -> Path:
    """Refuse, before any work, an output ``path`` igmu could not write: a file where a folder
    must be (the path or one of its parents), a folder without write permission or on a
    read-only file system, or a disk with less than ``MIN_FREE_BYTES`` free. ``folder=False``:
    ``path`` is a file (a store) to create or update. Creates nothing; returns the path."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{what} {path}: is a file, not a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{what} {path}: is a folder, not a file")
        if not os.access(path if folder else path.parent, os.W_OK | os.X_OK) or (
                not folder and not os.access(path, os.W_OK)):
            raise ConfigError(f"{what} {path}: not writable (permissions or a read-only disk)")
        _check_free_space(path if folder else path.parent, path, what)
        return path
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"{what} {path}: cannot create it, {parent} is not writable "
                    "(permissions or a read-only disk)"
                )
            _check_free_space(parent, path, what)
            break
    return path


WRITER_LOCK = ".igmu-writer.lock"


@contextlib.contextmanager
def sole_writer(folder: str | Path, command: str) -> Iterator[None]:
    """Hold ``folder`` for one writing command: a second command into the same folder while
    this one runs stops at once with an error naming the folder and the other process, instead
    of both exiting 0 with one run's files under the other's name (POSIX flock, released when
    the process ends however it ends)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: one writer per folder is the user's to keep
        yield
        return
    with open(folder / WRITER_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "another process"
            raise ConfigError(
                f"{folder}: {other} is writing this folder; wait for it to finish or choose "
                "another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"igmu {command} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

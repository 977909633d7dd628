"""The JSONL manifest `igmu evaluate --layout manifest` reads, shared by every method of a DIR.

One row per image: the fields `read_manifest` needs (method, prompt_set, class_name, prompt_index,
seed, prompt, path relative to the manifest) plus provenance (class_index, cache key, the PNG's
sha256, generator fingerprint, model, settings). A write merges the rows already there with the
new ones (new wins per key), sorts them and replaces the file atomically under a lock, so methods
can be generated one after another, or at the same time, into one DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError
from igmu.core.files import read_jsonl, remove_stale_tmp, write_atomic
from igmu.dataset.layouts import MANIFEST_FIELDS

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".manifest.lock"

RowKey = tuple[str, str, str, int, int]


def row_key(row: dict[str, Any]) -> RowKey:
    return (
        str(row["method"]),
        str(row["prompt_set"]),
        str(row["class_name"]),
        int(row["prompt_index"]),
        int(row["seed"]),
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for where, row in read_jsonl(path, "manifest"):
        if any(f not in row for f in MANIFEST_FIELDS):
            raise ConfigError(
                f"{where}: a manifest row needs the fields {', '.join(MANIFEST_FIELDS)}"
            )
        rows.append(row)
    return rows


def merge_rows(
    existing: list[dict[str, Any]], new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Union by key (method, prompt_set, class_name, prompt_index, seed); ``new`` wins; sorted."""
    merged: dict[RowKey, dict[str, Any]] = {}
    for row in [*existing, *new]:
        merged[row_key(row)] = row
    return [merged[key] for key in sorted(merged)]


def dumps_rows(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


@contextlib.contextmanager
def manifest_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on DIR for the read-merge-replace of its manifest (POSIX flock)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent writers supported
        yield
        return
    with open(folder / LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def update_manifest(folder: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``rows`` into ``folder/manifest.jsonl`` atomically; return all its rows."""
    path = folder / MANIFEST_NAME
    with manifest_lock(folder):
        remove_stale_tmp(folder)
        merged = merge_rows(read_rows(path), rows)
        data = dumps_rows(merged)
        if not path.is_file() or path.read_bytes() != data:
            write_atomic(path, data, sync_dir=True)
    return merged


def mixed_generators(rows: list[dict[str, Any]]) -> list[str]:
    """Methods whose rows come from more than one generator or settings (e.g. a rerun with
    other steps): a warning, since their images are then not one model's."""
    seen: dict[str, set[str]] = {}
    for row in rows:
        identity = json.dumps([row.get("generator"), row.get("settings")], sort_keys=True)
        seen.setdefault(str(row["method"]), set()).add(identity)
    return sorted(method for method, ids in seen.items() if len(ids) > 1)


def manifest_path(folder: Path) -> Path:
    return Path(os.fspath(folder)) / MANIFEST_NAME

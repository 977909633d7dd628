"""Warm reruns that load nothing: an evaluation asked for again with the same inputs is answered
from the store, without building a network, decoding an image or hashing a weights file.

The request key names everything the results depend on, cheaply: igmu's version and the
versions of the packages that compute, the task file's content and the CatIGMU hierarchy's,
the options, every image's path and file identity (size, modification and change times,
inode: any write changes the change time) and the same file identity of every weights file or
folder the models file names (and of the weights the worlds ship). Anything that differs is a
miss, and the run is computed (its expensive parts still cached by content).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import igmu
from igmu.core.records import ImageRecord

FORMAT = "igmu.request/1"


def _identity(path: Path) -> list[Any]:
    info = path.stat()
    return [str(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _tree(path: Path) -> list[Any]:
    """File identities of a file, or of every file below a folder."""
    if path.is_file():
        return [_identity(path)]
    if path.is_dir():
        return [_identity(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return []


def _paths_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if ("/" in value or "\\" in value) and Path(value).exists() else []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return []


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def request_key(
    task: Any, records: list[ImageRecord], models_values: dict[str, Any],
    options: dict[str, Any], packages: tuple[str, ...],
) -> str:
    taxonomy = resources.files("igmu.taxonomy").joinpath("catigmu.yaml").read_bytes()
    from igmu.worlds import WORLDS

    shipped = [p for name in WORLDS.names() for p in WORLDS.get(name).weight_paths()]
    payload = {
        "format": FORMAT,
        "igmu": igmu.__version__,
        "packages": installed_versions(packages),
        "task": [task.name, task.content_sha256, hashlib.sha256(taxonomy).hexdigest()],
        "options": options,
        "images": sorted(
            [r.method, str(r.key), r.prompt, *_identity(Path(r.path))] for r in records
        ),
        "models": models_values,
        "model_files": sorted(
            item for p in _paths_in(models_values) for item in _tree(Path(p))
        ),
        "shipped": [item for path in shipped for item in _tree(Path(path))],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

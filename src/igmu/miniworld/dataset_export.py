"""DataIGM training layout: ``<root>/<split>/<class>/<file>.png`` plus ``<root>/manifest.jsonl``.

Generic (any labelled images, real or rendered): ``LayoutWriter`` writes the layout, and
``read_layout`` reads it back, from the manifest when there is one (labels beyond the folder's
class live there) or else from the folder tree alone (label ``class`` = the folder name).

Manifest rows (one JSON object a line, sorted by split then path)::

    {"split": "train", "class": "cross", "path": "train/cross/000017.png",
     "sha256": "...", "labels": {"shape": "cross", "colour": "red", ...}, ...extra fields}

``export_world`` renders a MiniWorld dataset in this layout (class folder = one label, all
labels and the scene, its seed and a training caption in the manifest).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from igmu.core.errors import ConfigError

MANIFEST = "manifest.jsonl"
INFO = "dataset.json"
SCHEMA = "igmu.dataigm.layout/1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class LayoutItem:
    split: str
    class_name: str
    path: Path  # absolute
    labels: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def label(self, head: str) -> str:
        if head == "class":
            return self.class_name
        if head not in self.labels:
            raise ConfigError(f"{self.path}: no label {head!r} in the manifest row")
        return self.labels[head]


def png_bytes(image: np.ndarray) -> bytes:
    """Deterministic PNG encoding of an H x W x 3 uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(
        buffer, format="PNG", compress_level=6
    )
    return buffer.getvalue()


def _check_name(value: str, what: str) -> str:
    if not _SAFE_NAME.match(value):
        raise ConfigError(f"{what} {value!r} must be a plain folder name ([A-Za-z0-9_.+-])")
    return value


class LayoutWriter:
    """Write images into the layout; ``close`` writes the manifest and ``dataset.json``."""

    def __init__(self, root: str | Path, info: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        if (self.root / MANIFEST).exists():
            raise ConfigError(f"{self.root}: already holds a {MANIFEST}; choose an empty folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.info = dict(info or {})

    def add(
        self,
        split: str,
        class_name: str,
        image: np.ndarray,
        labels: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        _check_name(split, "split")
        _check_name(class_name, "class")
        index = self.counts.get(split, 0)
        self.counts[split] = index + 1
        relative = f"{split}/{class_name}/{index:06d}.png"
        data = png_bytes(image)
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        row = {
            "split": split,
            "class": class_name,
            "path": relative,
            "sha256": hashlib.sha256(data).hexdigest(),
            "labels": dict(labels or {}),
            **extra,
        }
        self.rows.append(row)
        return row

    def close(self) -> Path:
        rows = sorted(self.rows, key=lambda r: (r["split"], r["path"]))
        lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows]
        manifest = self.root / MANIFEST
        manifest.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        info = {
            "schema": SCHEMA,
            **self.info,
            "splits": dict(sorted(self.counts.items())),
            "manifest_sha256": manifest_sha256(self.root),
        }
        (self.root / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return manifest


def manifest_sha256(root: str | Path) -> str:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{root}: no {MANIFEST}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_layout(root: str | Path, verify: bool = False) -> list[LayoutItem]:
    """Every image of a layout; ``verify`` re-hashes each file against the manifest."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: dataset folder does not exist")
    manifest = root / MANIFEST
    items = []
    if manifest.is_file():
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{manifest}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not JSON: {exc}") from None
            for key in ("split", "class", "path"):
                if not isinstance(row.get(key), str):
                    raise ConfigError(f"{where}: field {key!r} is missing or not text")
            path = (root / row["path"]).resolve()
            if root.resolve() not in path.parents:
                raise ConfigError(f"{where}: path {row['path']!r} leaves the dataset folder")
            if not path.is_file():
                raise ConfigError(f"{where}: image {row['path']} does not exist")
            sha = row.get("sha256")
            if verify and sha and hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                raise ConfigError(f"{where}: {row['path']} does not match its sha256")
            extra = {
                k: v
                for k, v in row.items()
                if k not in ("split", "class", "path", "sha256", "labels")
            }
            labels = {str(k): str(v) for k, v in (row.get("labels") or {}).items()}
            items.append(LayoutItem(row["split"], row["class"], path, labels, sha, extra))
        return items
    from igmu.core.images import is_image_file

    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.is_file() and is_image_file(path):
                    items.append(LayoutItem(split_dir.name, class_dir.name, path.resolve()))
    if not items:
        raise ConfigError(f"{root}: no {MANIFEST} and no images in <split>/<class>/ folders")
    return items


def split_seed(seed: int, split: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8"))])


def export_world(
    root: str | Path,
    splits: Mapping[str, int] | None = None,
    seed: int = 0,
    size: int = 32,
    class_field: str = "shape",
    constraints: Mapping[str, Any] | None = None,
) -> Path:
    """Render a MiniWorld dataset into the layout; returns the manifest path.

    Scenes of split ``s`` come from ``SeedSequence([seed, crc32(s)])``, so splits are
    independent and each is reproducible on its own; captions use a separate stream.
    """
    from igmu.miniworld.captions import caption_mix
    from igmu.miniworld.world import LABEL_CLASSES, WORLD_VERSION, render, sample_scene

    if class_field not in LABEL_CLASSES:
        raise ConfigError(f"class_field must be one of {sorted(LABEL_CLASSES)}")
    splits = dict(splits or {"train": 6000, "test": 2000})
    writer = LayoutWriter(
        root,
        {
            "generator": "igmu.miniworld.dataset_export.export_world",
            "world_version": WORLD_VERSION,
            "seed": int(seed),
            "size": int(size),
            "class_field": class_field,
            "constraints": {k: v for k, v in (constraints or {}).items()},
        },
    )
    for split, count in splits.items():
        scene_seed, caption_seed = split_seed(seed, split).spawn(2)
        scene_rng = np.random.default_rng(scene_seed)
        caption_rng = np.random.default_rng(caption_seed)
        for index in range(int(count)):
            scene = sample_scene(scene_rng, **dict(constraints or {}))
            labels = scene.labels()
            writer.add(
                split,
                labels[class_field],
                render(scene, size),
                labels,
                scene=scene.to_dict(),
                caption=caption_mix(scene, caption_rng),
                index=index,
            )
    return writer.close()


def write_items(
    root: str | Path, items: Iterable[tuple[str, str, np.ndarray, Mapping[str, str]]]
) -> Path:
    """Write (split, class, image, labels) tuples as a layout; returns the manifest path."""
    writer = LayoutWriter(root, {"generator": "igmu.miniworld.dataset_export.write_items"})
    for split, class_name, image, labels in items:
        writer.add(split, class_name, image, labels)
    return writer.close()

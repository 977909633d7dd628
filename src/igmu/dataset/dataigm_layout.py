"""The one DataIGM layout: ``<split>/<class>/<file>`` + ``manifest.jsonl`` + ``datacard.json``.

Every dataset igmu writes or reads has this shape - the binary detector sets of ``igmu data
build``/``import`` (``igmu.dataset.dataigm`` adds their ``label`` rules) and the multi-label
MiniWorld exports that train its judges. The folder tree is what torchvision's ImageFolder and
IGMU's trainer read; the manifest is what igmu reads. Manifest rows (one JSON object a line,
sorted by split then path) have at least ``split``, ``class``, ``path`` and ``sha256``; a
binary set adds ``label`` (0/1), a multi-label one ``labels`` ({head: value}); any other field
travels along. The card describes the whole set (schema, counts, the manifest's sha256, how it
was made).

``read_layout`` is the one reader; without a manifest it reads the folder tree alone
(label ``class`` = the folder name). Exports written before the card was unified
(``dataset.json``, schema ``igmu.dataigm.layout/1``) still read: their info becomes the card.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.core.files import read_jsonl, read_text, write_atomic

MANIFEST = "manifest.jsonl"
DATACARD = "datacard.json"
SCHEMA = "igmu.dataigm/1"
LEGACY_CARD = "dataset.json"
LEGACY_SCHEMA = "igmu.dataigm.layout/1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{split: {class: images}}."""
    table: dict[str, Counter] = {}
    for row in rows:
        table.setdefault(row["split"], Counter())[row["class"]] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(table.items())}


def manifest_text(rows: list[dict[str, Any]]) -> str:
    ordered = sorted(rows, key=lambda r: (r["split"], r["path"]))
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in ordered)


def write_manifest(root: Path, rows: list[dict[str, Any]]) -> str:
    """Write the manifest (sorted); returns its sha256."""
    text = manifest_text(rows)
    write_atomic(Path(root) / MANIFEST, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_datacard(root: Path, card: dict[str, Any]) -> None:
    write_atomic(Path(root) / DATACARD, json.dumps(card, indent=2, sort_keys=True) + "\n")


def manifest_sha256(root: str | Path) -> str:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{root}: no {MANIFEST}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_bytes(image: np.ndarray) -> bytes:
    """Deterministic PNG encoding of an H x W x 3 uint8 array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(
        buffer, format="PNG", compress_level=6
    )
    return buffer.getvalue()


def check_name(value: str, what: str) -> str:
    if not _SAFE_NAME.match(value):
        raise ConfigError(f"{what} {value!r} must be a plain folder name ([A-Za-z0-9_.+-])")
    return value


def row_label(row: Mapping[str, Any], head: str) -> str:
    """A multi-label row's value for ``head``; head ``class`` is the class folder."""
    if head == "class":
        return str(row["class"])
    labels = row.get("labels") or {}
    if head not in labels:
        raise ConfigError(f"{row.get('abs', row['path'])}: no label {head!r} in the manifest row")
    return str(labels[head])


class LayoutWriter:
    """Write rendered images into the layout; ``close`` writes the manifest and the card."""

    def __init__(self, root: str | Path, card: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        if (self.root / MANIFEST).exists():
            raise ConfigError(f"{self.root}: already holds a {MANIFEST}; choose an empty folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.next_index: dict[str, int] = {}
        self.card = dict(card or {})

    def add(
        self,
        split: str,
        class_name: str,
        image: np.ndarray,
        labels: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        check_name(split, "split")
        check_name(class_name, "class")
        index = self.next_index.get(split, 0)
        self.next_index[split] = index + 1
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
        sha = write_manifest(self.root, self.rows)
        write_datacard(
            self.root,
            {
                "schema": SCHEMA,
                **self.card,
                "counts": counts(self.rows),
                "n_images": len(self.rows),
                "manifest_sha256": sha,
            },
        )
        return self.root / MANIFEST


@dataclass(frozen=True)
class Layout:
    root: Path
    card: dict[str, Any]  # {} for a bare folder tree
    rows: list[dict[str, Any]]  # manifest rows, each with "abs": the absolute image path

    def split(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["split"] == name]

    def splits(self) -> list[str]:
        return sorted({r["split"] for r in self.rows})

    def fingerprint(self) -> str | None:
        """sha256 of the manifest file (every image's hash, labels and split); None without one."""
        path = self.root / MANIFEST
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_card(root: Path) -> tuple[Path | None, dict[str, Any]]:
    """(card path, card) - the legacy ``dataset.json`` when there is no datacard; else {}."""
    for name, schema in ((DATACARD, SCHEMA), (LEGACY_CARD, LEGACY_SCHEMA)):
        path = root / name
        if not path.is_file():
            continue
        try:
            card = json.loads(read_text(path, "data card"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(card, dict) or card.get("schema") != schema:
            raise ConfigError(f"{path}: field 'schema' must be {schema!r}")
        return path, card
    return None, {}


def read_layout(
    root: str | Path,
    verify: bool = False,
    require_manifest: bool = False,
    check_row: Callable[[str, dict[str, Any]], None] | None = None,
) -> Layout:
    """Every image of a layout; ``verify`` re-hashes each file against the manifest.

    ``check_row(where, row)`` adds a kind's own rules (raising ``ConfigError`` naming ``where``,
    the manifest's file and line) before the image is looked up."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: dataset folder does not exist")
    _, card = read_card(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        if require_manifest:
            raise ConfigError(
                f"{root}: no {MANIFEST}; a DataIGM folder is written by `igmu data build` or "
                "`igmu data import`"
            )
        return Layout(root, card, _folder_rows(root))
    base = root.resolve()
    rows = []
    for where, row in read_jsonl(manifest, "DataIGM manifest"):
        for key in ("split", "class", "path", "sha256"):
            if not isinstance(row.get(key), str):
                raise ConfigError(f"{where}: field {key!r} is missing or not text")
        labels = row.get("labels")
        if labels is not None and not isinstance(labels, dict):
            raise ConfigError(f"{where}: field 'labels' must map a head to its value")
        if check_row is not None:
            check_row(where, row)
        path = (base / row["path"]).resolve()
        if base not in path.parents:
            raise ConfigError(f"{where}: path {row['path']!r} leaves the dataset folder")
        if not path.is_file():
            raise ConfigError(f"{where}: image {row['path']} does not exist")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
            raise ConfigError(f"{where}: {row['path']} does not match its sha256")
        rows.append({**row, "abs": str(path)})
    if not rows:
        raise ConfigError(f"{manifest}: no images")
    return Layout(root, card, rows)


def _folder_rows(root: Path) -> list[dict[str, Any]]:
    from igmu.core.images import is_image_file

    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.is_file() and is_image_file(path):
                    rows.append(
                        {
                            "split": split_dir.name,
                            "class": class_dir.name,
                            "path": path.relative_to(root).as_posix(),
                            "sha256": None,
                            "labels": {},
                            "abs": str(path.resolve()),
                        }
                    )
    if not rows:
        raise ConfigError(f"{root}: no {MANIFEST} and no images in <split>/<class>/ folders")
    return rows

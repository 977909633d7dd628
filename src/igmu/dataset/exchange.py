"""DataIGM through the Hugging Face ``datasets`` library: export (``hf`` = ``save_to_disk``,
``parquet`` = one file per split) and read back.

Columns: ``image`` (the original encoded bytes, never re-encoded), ``label`` (a ClassLabel
whose names are the card's ``classes`` in index order, so label 1 is the concept in every tool),
``class``, ``path``, ``prompt``, ``seed``, ``sha256``, ``family``. The data card is written
beside the data as ``datacard.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from igmu.core.errors import ConfigError, MissingExtraError
from igmu.core.files import read_text
from igmu.dataset import dataigm as D

FORMATS = ("hf", "parquet")
COLUMNS = ("class", "path", "prompt", "seed", "sha256", "family")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise MissingExtraError("DataIGM export and import", "data", "datasets") from None
    return datasets


def _features(classes: list[str]):
    ds = _datasets()
    return ds.Features(
        {
            "image": ds.Image(decode=False),
            "label": ds.ClassLabel(names=list(classes)),
            "class": ds.Value("string"),
            "path": ds.Value("string"),
            "prompt": ds.Value("string"),
            "seed": ds.Value("int64"),
            "sha256": ds.Value("string"),
            "family": ds.Value("string"),
        }
    )


def export_dataset(data: D.DataIGM, out: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ds = _datasets()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: folder exists and is not empty; choose a new --out")
    features = _features(data.classes)
    splits = {}
    for split in data.splits():
        rows = data.split(split)
        columns: dict[str, list[Any]] = {
            "image": [
                {"bytes": Path(r["abs"]).read_bytes(), "path": Path(r["path"]).name} for r in rows
            ],
            "label": [int(r["label"]) for r in rows],
        }
        for name in COLUMNS:
            columns[name] = [r.get(name) for r in rows]
        splits[split] = ds.Dataset.from_dict(columns, features=features)
    if fmt == "hf":
        ds.DatasetDict(splits).save_to_disk(str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for split, dataset in splits.items():
            dataset.to_parquet(str(out / f"{split}.parquet"))
    shutil.copyfile(data.root / D.DATACARD, out / D.DATACARD)
    return out


def exported_format(src: Path) -> str | None:
    if (src / "dataset_dict.json").is_file():
        return "hf"
    if src.is_dir() and any(src.glob("*.parquet")):
        return "parquet"
    return None


def read_exported(src: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(card or None, rows with the image bytes under "bytes") of an export."""
    ds = _datasets()
    fmt = exported_format(src)
    if fmt == "hf":
        loaded = ds.load_from_disk(str(src))
        splits = {name: loaded[name] for name in loaded}
    elif fmt == "parquet":
        splits = {p.stem: ds.Dataset.from_parquet(str(p)) for p in sorted(src.glob("*.parquet"))}
    else:
        raise ConfigError(f"{src}: not a DataIGM export (no dataset_dict.json, no *.parquet)")
    card_path = src / D.DATACARD
    card = json.loads(read_text(card_path, "data card")) if card_path.is_file() else None
    rows = []
    for split, dataset in splits.items():
        if "image" not in dataset.column_names or "label" not in dataset.column_names:
            raise ConfigError(f"{src}: split {split!r} needs columns 'image' and 'label'")
        dataset = dataset.cast_column("image", ds.Image(decode=False))
        names = (
            dataset.features["label"].names if hasattr(dataset.features["label"], "names") else None
        )
        for record in dataset:
            image = record["image"] or {}
            if not image.get("bytes"):
                raise ConfigError(f"{src}: split {split!r} has a row without image bytes")
            rows.append(
                {
                    "split": split,
                    "bytes": image["bytes"],
                    "name": image.get("path"),
                    "label": int(record["label"]),
                    "label_names": names,
                    **{k: record.get(k) for k in COLUMNS},
                }
            )
    return card, rows

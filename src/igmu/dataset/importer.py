"""`igmu data import`: real labelled images (or a DataIGM export) into the DataIGM layout.

Sources: a folder per class (``<class>/<file>``), or per split and class
(``<split>/<class>/<file>`` with splits train, val/validation, test, as IGMU's training data),
or a folder written by `igmu data export` (HF or parquet). ``--concept`` names the class folder
that holds the concept (label 1); every other folder is label 0 and stays its own prompt family.
With ``concept_free`` every image is label 0 (a set for false-positive audits) and ``--concept``
only names the concept.
Every file is decoded: unreadable ones are named and left out; byte-identical duplicates are
reported (the first copy in path order is kept), and so are duplicates whose labels or splits
disagree. Images keep their bytes (no re-encoding) and get content-addressed names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

import igmu
from igmu.core.errors import ConfigError, ImageError
from igmu.core.registry import did_you_mean
from igmu.dataset import dataigm as D

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclass
class ImportResult:
    root: Path
    rows: list[dict[str, Any]]
    card: dict[str, Any]


def _tree(src: Path) -> tuple[list[tuple[str | None, str, Path]], list[dict[str, str]]]:
    """(split or None, class folder, file) for every file, and files that are not images."""
    from igmu.core.images import is_image_file

    top = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not top:
        raise ConfigError(f"{src}: no class folders (<class>/<file> or <split>/<class>/<file>)")
    by_split = all(p.name.lower() in SPLIT_NAMES for p in top)
    entries, skipped = [], []
    for folder in top:
        classes = sorted(p for p in folder.iterdir() if p.is_dir()) if by_split else [folder]
        split = SPLIT_NAMES[folder.name.lower()] if by_split else None
        for class_dir in classes:
            for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                if path.name.startswith("."):
                    continue
                if not is_image_file(path):
                    skipped.append(
                        {
                            "path": str(path.relative_to(src)),
                            "reason": "not an image file extension",
                        }
                    )
                    continue
                entries.append((split, class_dir.name, path))
    return entries, skipped


def _load(src: Path, concept: str | None, concept_free: bool, progress: bool):
    """Candidate rows (bytes, source class, split, label, ...) and rejected files."""
    from igmu.core.images import decode_bytes
    from igmu.dataset.exchange import exported_format, read_exported

    if exported_format(src):
        card, rows = read_exported(src)
        classes = (card or {}).get("classes") or rows[0]["label_names"]
        items = [
            {
                **r,
                "source": f"{r['split']}/{r.get('path') or r['name']}",
                "family": r.get("family") or classes[r["label"]],
            }
            for r in rows
        ]
        return items, [], classes, card
    entries, rejected = _tree(src)
    names = sorted({c for _, c, _ in entries})
    if concept is None:
        raise ConfigError(
            f"{src}: give --concept, the class folder of the concept (one of {', '.join(names)})"
        )
    match = [c for c in names if c.lower() == concept.lower()]
    if concept_free:
        match = [None]  # every folder is label 0; --concept only names the concept class
    elif not match:
        raise ConfigError(
            f"--concept {concept!r}: no such class folder in {src}.{did_you_mean(concept, names)}"
        )
    classes = D.class_names(match[0] or concept)
    items = []
    for split, class_name, path in tqdm(entries, desc="import", unit="img", disable=not progress):
        relative = str(path.relative_to(src))
        try:
            data = path.read_bytes()
            decode_bytes(data, relative)
        except (ImageError, OSError) as exc:
            rejected.append({"path": relative, "reason": str(exc)})
            continue
        label = int(class_name == match[0])
        items.append(
            {
                "bytes": data,
                "split": split,
                "label": label,
                "family": class_name,
                "source": relative,
                "name": path.name,
                "prompt": None,
                "seed": None,
            }
        )
    return items, rejected, classes, None


def import_images(
    src: Path,
    out: Path,
    concept: str | None,
    fractions: dict[str, float],
    seed: int = 0,
    progress: bool = True,
    concept_free: bool = False,
) -> ImportResult:
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ConfigError(f"--src {src}: folder does not exist")
    if (out / D.MANIFEST).exists():
        raise ConfigError(f"{out}: already holds a {D.MANIFEST}; choose an empty folder")
    items, rejected, classes, source_card = _load(src, concept, concept_free, progress)
    if not items:
        raise ConfigError(f"{src}: no readable images")
    for item in items:
        item["sha256"] = hashlib.sha256(item["bytes"]).hexdigest()
    first: dict[str, dict[str, Any]] = {}
    duplicates = []
    for item in sorted(items, key=lambda i: i["source"]):
        kept = first.setdefault(item["sha256"], item)
        if kept is not item:
            duplicates.append(
                {
                    "path": item["source"],
                    "same_as": kept["source"],
                    "sha256": item["sha256"],
                    "label_conflict": kept["label"] != item["label"],
                    "split_conflict": kept["split"] != item["split"],
                }
            )
    unique = list(first.values())
    if any(i["split"] is None for i in unique):
        strata: dict[str, dict[str, str]] = {}
        for i in unique:
            strata.setdefault(str(i["label"]), {})[i["sha256"]] = i["family"]
        assigned = D.assign_splits(strata, fractions, seed)
        for i in unique:
            i["split"] = i["split"] or assigned[i["sha256"]]
    rows = []
    for i in unique:
        class_name = classes[i["label"]]
        suffix = Path(i["name"] or "").suffix.lower() or ".png"
        name = i["name"] if source_card else f"{D.slug(i['family'])}-{i['sha256'][:16]}{suffix}"
        relative = f"{i['split']}/{class_name}/{name}"
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(i["bytes"])
        rows.append(
            {
                "path": relative,
                "split": i["split"],
                "class": class_name,
                "label": i["label"],
                "prompt": i.get("prompt"),
                "seed": i.get("seed"),
                "sha256": i["sha256"],
                "family": i["family"],
                "source": i["source"],
            }
        )
    manifest_sha = D.write_manifest(out, rows)
    card = dict(source_card or {})
    card.update(
        {
            "schema": D.SCHEMA,
            "imported_by": f"igmu {igmu.__version__} data import",
            "imported_from": str(src.resolve()),
            "source": card.get("source", "imported"),
            "classes": classes,
            "concept_class": classes[1],
            "imagefolder_class_to_idx": D.imagefolder_indices(classes),
            "label_trap": D.LABEL_TRAP,
            "counts": D.counts(rows),
            "n_images": len(rows),
            "images": {r["path"]: r["sha256"] for r in sorted(rows, key=lambda r: r["path"])},
            "rejected": sorted(rejected, key=lambda r: r["path"]),
            "duplicates": duplicates,
            "manifest_sha256": manifest_sha,
        }
    )
    if not source_card:
        card["label_rule"] = (
            f"every image label 0 (no {classes[1]}): a concept-free set for false-positive audits"
            if concept_free
            else f"label 1 ({classes[1]}): images in class folder {classes[1]!r}; "
            "label 0: every other class folder (kept as the prompt family)"
        )
        card["split_rule"] = (
            "the source's split folders when it has them; else by image, per label, each "
            "class folder getting its share; images shuffled with the seed within a folder"
        )
        card["split"] = {"fractions": fractions, "seed": seed}
    D.write_datacard(out, card)
    return ImportResult(out, rows, card)

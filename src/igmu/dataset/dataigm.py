"""Binary DataIGM sets: the one layout (``igmu.dataset.dataigm_layout``) with a judge's labels.

Binary by design (a judge says "concept" or not): every image has ``label`` 1 (concept) or 0
(no concept), and the class folders are the concept's name and ``other``. The manifest and the
card are what igmu reads, so a class index never comes from folder order (the IGMU label trap:
ImageFolder sorts folder names, so ``church`` is 0 and ``parachute`` is 1). The card's
``classes`` list is the index order: ``classes[label]``.

Manifest rows, at least::

    {"path": "train/cross/forget-cross-007-s1.png", "split": "train", "class": "cross",
     "label": 1, "prompt": "...", "seed": 1, "sha256": "...", "family": "forget/cross"}

``family`` is what error-per-family audits group by (a prompt set and class for built data,
the source folder for imported data). Imported images have ``prompt`` and ``seed`` null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.dataset.dataigm_layout import (
    DATACARD,
    MANIFEST,
    SCHEMA,
    Layout,
    counts,
    read_card,
    read_layout,
    write_datacard,
    write_manifest,
)

__all__ = [
    "DATACARD", "MANIFEST", "SCHEMA", "DataIGM", "class_names", "counts", "read_dataigm",
    "write_datacard", "write_manifest",
]  # fmt: skip
SPLITS = ("train", "val", "test")
OTHER = "other"
REQUIRED = ("path", "split", "class", "label", "prompt", "seed", "sha256")
LABEL_TRAP = (
    "Class indices are explicit: label 1 = the concept, 0 = everything else, and the card's "
    "'classes' lists the names in index order. torchvision's ImageFolder would instead number "
    "the folders alphabetically (see 'imagefolder_class_to_idx'); IGMU's released heads were "
    "trained that way, which is why their concept index differs per head."
)
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def slug(text: str) -> str:
    """A plain folder name from a concept or class name."""
    name = _SAFE.sub("_", text.strip()).strip("._-")
    return name or "concept"


def class_names(concept: str) -> list[str]:
    """[name of label 0, name of label 1]."""
    concept_class = slug(concept)
    other = OTHER if concept_class != OTHER else "not_other"
    return [other, concept_class]


def imagefolder_indices(classes: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(classes))}


def parse_fractions(text: str) -> dict[str, float]:
    """``0.7,0.15,0.15`` -> train/val/test shares (two values: train/test)."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--split {text!r}: give fractions like 0.7,0.15,0.15") from None
    if len(values) not in (2, 3) or any(v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"--split {text!r}: two or three non-negative fractions (train,val,test)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"--split {text!r}: the fractions must add up to 1")
    names = SPLITS if len(values) == 3 else ("train", "test")
    return {name: value for name, value in zip(names, values, strict=True) if value > 0}


def _quotas(count: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding; every split with a share gets one unit when count allows."""
    exact = {s: count * f for s, f in fractions.items()}
    quotas = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: quotas[s] - exact[s])[: count - sum(quotas.values())]:
        quotas[s] += 1
    for s in fractions:
        if quotas[s] == 0 and count >= len(fractions):
            donor = max(quotas, key=quotas.__getitem__)
            quotas[donor] -= 1
            quotas[s] += 1
    return quotas


def assign_splits(
    strata: dict[str, dict[str, str]], fractions: dict[str, float], seed: int
) -> dict[str, str]:
    """Group key -> split. ``strata`` maps a stratum (e.g. a label) to {group key: family}.

    Each stratum is cut by the fractions (largest remainder), and each family gets its own
    share of every split as far as counts allow: a family's floor(n * fraction) groups first,
    then the stratum's remaining places go to the largest remainders across families (ties in
    a seeded order). Groups are shuffled with ``seed`` within each family."""
    rng = np.random.default_rng(seed)
    splits = list(fractions)
    assigned: dict[str, str] = {}
    for stratum in sorted(strata):
        members = {k: f for k, f in strata[stratum].items() if k not in assigned}
        families: dict[str, list[str]] = {}
        for key in sorted(members):
            families.setdefault(members[key], []).append(key)
        quotas = _quotas(len(members), fractions)
        take = {
            f: {s: int(np.floor(len(k) * fractions[s])) for s in splits}
            for f, k in families.items()
        }
        left = {f: len(k) - sum(take[f].values()) for f, k in families.items()}
        room = {s: quotas[s] - sum(take[f][s] for f in families) for s in splits}
        tiebreak = rng.permutation(len(families) * len(splits))
        pairs = sorted(
            (
                (len(families[f]) * fractions[s] - take[f][s], t, f, s)
                for t, (f, s) in zip(
                    tiebreak, [(f, s) for f in sorted(families) for s in splits], strict=True
                )
            ),
            key=lambda p: (-p[0], p[1]),
        )
        for _ in range(2):  # by remainder, then anything left wherever there is room
            for _, _, family, split in pairs:
                if left[family] > 0 and room[split] > 0:
                    take[family][split] += 1
                    left[family] -= 1
                    room[split] -= 1
        for family in sorted(families):
            keys = families[family]
            order = [keys[i] for i in rng.permutation(len(keys))]
            start = 0
            for split in splits:
                for key in order[start : start + take[family][split]]:
                    assigned[key] = split
                start += take[family][split]
    return assigned


@dataclass(frozen=True)
class DataIGM(Layout):
    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def concept_class(self) -> str:
        return self.classes[1]


def read_dataigm(root: str | Path, verify: bool = False) -> DataIGM:
    """A binary DataIGM folder (manifest + card); ``verify`` re-hashes every image."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: dataset folder does not exist")
    card_path = root / DATACARD
    if not card_path.is_file():
        raise ConfigError(
            f"{root}: no {DATACARD}; a DataIGM folder is written by `igmu data build` or "
            "`igmu data import`"
        )
    _, card = read_card(root)
    if "label_heads" in card:
        raise ConfigError(
            f"{card_path}: a multi-label set (heads {card['label_heads']}); this command needs a "
            "binary DataIGM set (classes [label 0, label 1]) from `igmu data build` or "
            "`igmu data import`"
        )
    classes = card.get("classes")
    if not (
        isinstance(classes, list) and len(classes) == 2 and all(isinstance(c, str) for c in classes)
    ):
        raise ConfigError(f"{card_path}: field 'classes' must list two names [label 0, label 1]")

    def binary(where: str, row: dict[str, Any]) -> None:
        for key in REQUIRED:
            if key not in row:
                raise ConfigError(f"{where}: field {key!r} is missing")
        if row["label"] not in (0, 1) or isinstance(row["label"], bool):
            raise ConfigError(f"{where}: field 'label' must be 0 or 1, got {row['label']!r}")
        if row["class"] != classes[row["label"]]:
            raise ConfigError(
                f"{where}: class {row['class']!r} does not match label {row['label']} "
                f"({classes[row['label']]!r} in {card_path.name})"
            )

    layout = read_layout(root, verify=verify, require_manifest=True, check_row=binary)
    return DataIGM(layout.root, layout.card, layout.rows)

"""MiniWorld datasets in the DataIGM layout (``igmu.dataset.dataigm_layout``).

``export_world`` renders scenes into ``<split>/<shape>/<index>.png``; each manifest row carries
all labels, the scene, its seed-derived caption and its index::

    {"split": "train", "class": "cross", "path": "train/cross/000017.png",
     "sha256": "...", "labels": {"shape": "cross", "colour": "red", ...}, "scene": {...},
     "caption": "...", "index": 17}

The card names the label heads (``label_heads``), so a binary-only reader refuses the set by
name rather than misreading it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from igmu.core.errors import ConfigError
from igmu.dataset.dataigm_layout import LayoutWriter


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
            "label_heads": sorted(LABEL_CLASSES),
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
    items = list(items)
    heads = sorted({head for *_, labels in items for head in labels})
    writer = LayoutWriter(
        root, {"generator": "igmu.miniworld.dataset_export.write_items", "label_heads": heads}
    )
    for split, class_name, image, labels in items:
        writer.add(split, class_name, image, labels)
    return writer.close()

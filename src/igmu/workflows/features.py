"""Frozen CLIP image features for a DataIGM folder, computed once per (backbone, image).

Cached in the workspace store's ``features`` table under the backbone's key (`provider_key`:
fingerprint and fixed call shape) and the image's sha256, computed in the same fixed-shape
calls as ``igmu evaluate``: the same key and the same floats, so training, auditing and
evaluating share one cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from igmu.core.errors import ConfigError
from igmu.metrics.base import in_fixed_calls, provider_key


def clip_features(
    backbone: Any,
    rows: list[dict[str, Any]],
    store_path: Path,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """One row of ``backbone.image_embeddings`` per manifest row, in order."""
    from igmu.core.images import decode_image
    from igmu.store import Store

    store = Store(store_path)
    try:
        shas = [r["sha256"] for r in rows]
        key = provider_key(backbone)
        found = store.get_features(key, shas)
        missing = [r for r in dict.fromkeys(shas) if r not in found]
        todo = {r["sha256"]: r for r in rows if r["sha256"] in set(missing)}
        items = list(todo.values())
        bar = tqdm(total=len(items), desc="CLIP features", unit="img", disable=not progress)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            decoded = [decode_image(r["abs"]) for r in chunk]
            for row, image in zip(chunk, decoded, strict=True):
                if image.sha256 != row["sha256"]:
                    raise ConfigError(f"{row['abs']}: file does not match its manifest sha256")
            vectors = in_fixed_calls(backbone.image_embeddings, [d.pixels for d in decoded])
            new = {r["sha256"]: v for r, v in zip(chunk, vectors, strict=True)}
            store.put_features(key, new)
            found.update(new)
            bar.update(len(chunk))
        bar.close()
    finally:
        store.close()
    return np.stack([np.asarray(found[s], dtype=np.float32) for s in shas])

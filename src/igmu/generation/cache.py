"""Content-addressed image cache: ``DIR/images/<key[:2]>/<key>.png``, written atomically.

``key`` = sha256 over (generator fingerprint, prompt, seed, settings). A file is written to a
temporary name in its final folder, flushed to disk and renamed into place, so a process killed at
any moment leaves either no file or the whole file under the key; a PNG holds pixels only (no
time stamp, no text chunks), so the same pixels always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from igmu.core.files import remove_stale_tmp, write_atomic
from igmu.generation.base import GenerationSettings

KEY_FORMAT = "igmu.image/1"
IMAGES_DIR = "images"


def cache_key(
    fingerprint: str,
    prompt: str,
    seed: int,
    settings: GenerationSettings,
    batch: list[tuple[str, int]] | None = None,
) -> str:
    """sha256 naming an image. ``batch``: the (prompt, seed) of every image generated in the same
    pipeline call, for generators whose pixels depend on it (batched pipeline calls)."""
    payload: dict = {
        "format": KEY_FORMAT,
        "generator": fingerprint,
        "prompt": prompt,
        "seed": int(seed),
        "settings": settings.as_dict(),
    }
    if batch is not None:
        payload["batch"] = [[p, int(s)] for p, s in batch]
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class ImageCache:
    """PNG files by cache key under ``root/images``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.images = self.root / IMAGES_DIR

    def relpath(self, key: str) -> str:
        return f"{IMAGES_DIR}/{key[:2]}/{key}.png"

    def path(self, key: str) -> Path:
        return self.root / self.relpath(key)

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, image: np.ndarray) -> str:
        """Store an image under ``key`` unless present; return the PNG's sha256."""
        path = self.path(key)
        if path.is_file():
            return self.sha256(key)
        return self.put_png(key, encode_png(image))

    def put_png(self, key: str, data: bytes) -> str:
        """Store encoded PNG bytes (`encode_png`'s) under ``key`` unless present; their sha256."""
        path = self.path(key)
        if path.is_file():
            return self.sha256(key)
        write_atomic(path, data)
        return hashlib.sha256(data).hexdigest()

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.path(key).read_bytes()).hexdigest()

    def remove_stale_tmp(self) -> int:
        return remove_stale_tmp(self.images, recursive=True)

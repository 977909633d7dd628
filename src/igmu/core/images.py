"""Decode images once, safely, into RGB uint8 arrays."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from igmu.core.errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# 8192 x 8192: far above any generated image, far below a decompression bomb.
MAX_PIXELS = 8192 * 8192
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodedImage:
    path: str
    sha256: str
    pixels: np.ndarray  # H x W x 3, uint8, RGB

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(image: Image.Image, path: str) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() <= 65535 else float(array.max())
        gray = np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255)
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Composite on white: what a viewer sees, and never reveals hidden masked pixels as-is.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode in ("RGB;16", "RGB;16B", "BGR;16"):
        raise ImageError(f"{path}: unsupported 48-bit colour mode {mode}")
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageError(f"{path}: cannot convert colour mode {mode} to RGB: {exc}") from None


def decode_bytes(data: bytes, path: str) -> DecodedImage:
    """Decode encoded image bytes; every failure is an ImageError naming ``path``."""
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS} "
                        "(possible decompression bomb); refusing to decode"
                    )
                image.load()
                pixels = _to_rgb(image, path)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a possible decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: image is truncated or corrupt: {exc}") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ImageError(f"{path}: decoded to an unexpected shape {pixels.shape}")
    return DecodedImage(path=path, sha256=digest, pixels=np.ascontiguousarray(pixels))


def decode_image(path: str | Path) -> DecodedImage:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file: {exc}") from None
    return decode_bytes(data, str(path))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pixels_sha256(image: np.ndarray) -> str:
    """A key for an image that has no file (a world's true image): the hash of its shape,
    type and pixels, prefixed so it never equals a file's sha256."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}|".encode())
    digest.update(array.tobytes())
    return f"pixels:{digest.hexdigest()}"

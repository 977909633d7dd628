"""The background judge: an exact rule on the image's border ring, not a trained head.

The MiniWorld's backgrounds are three flat colours (``world.BACKGROUND_RGB``) and the subject never
reaches the outermost ``RING`` pixels of a 32 x 32 image: its farthest point is the triangle's
base corner, ``_TRI_HALF_BASE * BASE_RADIUS * max scale + MAX_OFFSET`` = 0.403 image units from
the centre, i.e. 28.9 px of 32, while the ring starts at 30 px. So the background is read without
learning anything: resize the image to 32 x 32 (PIL bilinear, as the CNN judges do), then label
each ring pixel with the nearest background colour when every channel lies within ``TOLERANCE``
grey levels of it, else ``other``. The head's "probabilities" are the fractions of ring pixels per
class, where a background colour holding less than half the ring counts as ``other``: the
decision (the most likely class) is the colour of a majority of the ring, or ``other``.

Why a rule and not a fourth head on the CNN: it is exact on true images (tests check it on
renders of every size against the renderer's labels), it does not change the shipped CNN weights
or their fingerprint for the other heads, and it can say ``other``: a model that paints a
mid-grey wash or a gradient instead of the asked background is not counted as right by accident,
which a closed-set softmax head would do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from igmu.miniworld.world import BACKGROUND_RGB, BACKGROUNDS

HEAD = "background"
OTHER = "other"
CLASSES = (*BACKGROUNDS, OTHER)
SIZE = 32  # the ring is defined on the world's native size
RING = 2  # pixels from each edge
TOLERANCE = 40  # grey levels, per channel (white 242, grey 140, black 22: halfway is 51 / 59)
RULE_VERSION = 1  # part of the judges' fingerprint: raise it when the rule changes

RULE = (
    f"exact rule: resize to {SIZE}x{SIZE} (PIL bilinear); each pixel of the {RING}-pixel border "
    f"ring takes the nearest background colour if every channel is within {TOLERANCE} levels, "
    f"else '{OTHER}'; P(class) = share of ring pixels, a colour under half the ring counted "
    f"as '{OTHER}'"
)


def ring_mask(size: int = SIZE, ring: int = RING) -> np.ndarray:
    """A size x size boolean mask of the pixels less than ``ring`` from an edge."""
    mask = np.ones((size, size), dtype=bool)
    mask[ring : size - ring, ring : size - ring] = False
    return mask


def _as_rgb32(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {array.shape}")
    array = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
    if array.shape[:2] != (SIZE, SIZE):
        array = np.asarray(Image.fromarray(array).resize((SIZE, SIZE), Image.BILINEAR))
    return array


def background_probs(images: Sequence[np.ndarray]) -> np.ndarray:
    """N x len(CLASSES) float64: the share of border-ring pixels read as each class."""
    references = np.asarray([BACKGROUND_RGB[b] for b in BACKGROUNDS], dtype=np.int32)
    mask = ring_mask()
    out = np.zeros((len(images), len(CLASSES)))
    for i, image in enumerate(images):
        pixels = _as_rgb32(image)[mask].astype(np.int32)  # R x 3
        distance = np.abs(pixels[:, None, :] - references[None, :, :]).max(axis=2)  # R x 3
        nearest = distance.argmin(axis=1)
        label = np.where(distance.min(axis=1) <= TOLERANCE, nearest, len(BACKGROUNDS))
        shares = np.bincount(label, minlength=len(CLASSES)) / len(label)
        # A colour counts only where it holds half the ring or more: a gradient or a two-tone
        # border is "other", not whichever colour happens to lead.
        minority = shares[: len(BACKGROUNDS)] < 0.5
        shares[len(BACKGROUNDS)] += shares[: len(BACKGROUNDS)][minority].sum()
        shares[: len(BACKGROUNDS)][minority] = 0.0
        out[i] = shares
    return out

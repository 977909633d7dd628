"""Degenerate images refused before scoring: a 1x1 image in place of a forget image, a PNG that
declares 60,000,000 x 1 pixels, or one image of another size than the rest of its prompt set
would otherwise be scored silently (and can flip a residual rate from 1 to 0).

Sizes are read from the image headers (no decoding), over every image the run pairs:

- a side under ``MIN_SIDE`` pixels: no generator igmu knows makes one, and every detector and
  feature network would score an upsampled blur;
- an aspect ratio over ``MAX_ASPECT``: text-to-image models make square or near-square images;
- a size other than the most common one of its prompt set (over all methods): the images a set
  compares must be alike, or a metric compares resolutions, not methods.

``--allow-odd-sizes`` scores them anyway; run.json then lists each with its reason. An image
whose header cannot be read is left to decoding, which names it (or skips it under
``--allow-missing``).
"""

from __future__ import annotations

import warnings
from collections import Counter

from PIL import Image

from igmu.core.errors import ConfigError
from igmu.evaluation.pairing import PairedSet

MIN_SIDE = 16
MAX_ASPECT = 4.0
SHOWN = 5


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return int(image.size[0]), int(image.size[1])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def odd_sizes(paired: PairedSet) -> list[str]:
    """One line per odd image: ``PATH: WxH, reason``, in path order."""
    sizes: dict[str, dict[str, tuple[int, int]]] = {}  # prompt set -> path -> size
    for record in paired.all_records():
        prompt_set = record.key.prompt_set
        size = header_size(record.path)
        if size is not None:
            sizes.setdefault(prompt_set, {})[record.path] = size
    found: dict[str, str] = {}
    for prompt_set, by_path in sizes.items():
        counts = Counter(by_path.values())
        common, count = counts.most_common(1)[0]
        for path, (width, height) in by_path.items():
            if min(width, height) < MIN_SIDE:
                reason = f"a side under {MIN_SIDE} pixels"
            elif max(width, height) > MAX_ASPECT * min(width, height):
                reason = f"an aspect ratio over {MAX_ASPECT:g}:1"
            elif (width, height) != common:
                reason = (f"{count} of the {len(by_path)} {prompt_set} images are "
                          f"{common[0]}x{common[1]}")
            else:
                continue
            found[path] = f"{path}: {width}x{height}, {reason}"
    return [found[p] for p in sorted(found)]


def check_sizes(paired: PairedSet, allow_odd: bool) -> list[str]:
    """The odd images' lines (for run.json) when ``allow_odd``; otherwise a ConfigError that
    names them, when there are any."""
    odd = odd_sizes(paired)
    if odd and not allow_odd:
        more = f"\n  ... and {len(odd) - SHOWN} more" if len(odd) > SHOWN else ""
        raise ConfigError(
            f"{len(odd)} image(s) of a degenerate or odd size would be scored:\n  "
            + "\n  ".join(odd[:SHOWN]) + more
            + "\n(replace them, or pass --allow-odd-sizes to score them anyway; run.json then "
            "lists them)"
        )
    return odd

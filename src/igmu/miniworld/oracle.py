"""Read a MiniWorld caption back into labels, and draw it with the renderer: the oracle model.

``parse_caption`` recognises every wording ``captions.describe`` produces (English canonical and
paraphrased, de, fr, es, it, zh) and returns the labels the text asks for. ``oracle_scene``
completes them deterministically from a seed (parts the text leaves open are drawn), and
``oracle_image`` renders the result, optionally with a concept erased (``erase``): a perfect
text-to-image model and a perfect eraser, against which metrics can be checked.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import numpy as np

from igmu.miniworld import captions as C
from igmu.miniworld.world import Scene, erase, render, sample_scene


@lru_cache(maxsize=1)
def _lexicon() -> list[tuple[str, str, object]]:
    """(phrase, field, value), longest phrase first; matching is case-insensitive."""
    entries: list[tuple[str, str, object]] = []

    def add(field: str, value: object, *phrases: str) -> None:
        entries.extend((p.lower(), field, value) for p in phrases if p)

    for shape in C.EN_SHAPE:
        add(
            "shape",
            shape,
            C.EN_SHAPE[shape],
            *C.EN_PARA_SHAPE[shape],
            C.DE_SHAPE[shape][0],
            C.FR_SHAPE[shape][0],
            C.ES_SHAPE[shape][0],
            C.IT_SHAPE[shape][0],
            C.ZH_SHAPE[shape],
        )
    for colour in C.EN_PARA_COLOUR:
        add(
            "colour",
            colour,
            colour,
            *C.EN_PARA_COLOUR[colour],
            C.DE_COLOUR[colour],
            *C.FR_COLOUR[colour],
            *C.ES_COLOUR[colour],
            *C.IT_COLOUR[colour],
            C.ZH_COLOUR[colour],
        )
    for style in C.EN_STYLE_ADJ:
        add(
            "style",
            style,
            C.EN_STYLE_ADJ[style],
            C.EN_STYLE_WITH[style],
            C.EN_PARA_STYLE_ADJ[style],
            *C.EN_PARA_STYLE_WITH[style],
            C.DE_STYLE_ADJ[style],
            C.DE_STYLE_WITH[style],
            *C.FR_STYLE_ADJ[style],
            C.FR_STYLE_WITH[style],
            *C.ES_STYLE_ADJ[style],
            C.ES_STYLE_WITH[style],
            *C.IT_STYLE_ADJ[style],
            C.IT_STYLE_WITH[style],
            C.ZH_STYLE_ADJ[style][1:-1],
        )
    add("style", "plain", "plain")
    add(
        "attribute",
        True,
        *C.EN_SPOT,
        *C.EN_PARA_SPOT,
        C.DE_SPOT,
        C.FR_SPOT,
        C.ES_SPOT,
        C.IT_SPOT,
        C.ZH_SPOT,
        "white spot",
    )
    for bg in C.EN_PARA_BACKGROUND:
        add(
            "background",
            bg,
            f"{bg} background",
            *C.EN_PARA_BACKGROUND[bg],
            f"{C.DE_BACKGROUND[bg]} Hintergrund",
            f"fond {C.FR_BACKGROUND[bg]}",
            f"fondo {C.ES_BACKGROUND[bg]}",
            f"sfondo {C.IT_BACKGROUND[bg]}",
            C.ZH_BACKGROUND[bg],
        )
    return sorted(entries, key=lambda e: -len(e[0]))


def parse_caption(text: str) -> dict[str, object]:
    """The labels a caption asks for: shape, colour, style (``plain`` when no texture is named
    and a subject is), attribute (True/False), background (only when named)."""
    remaining = text.lower()
    found: dict[str, object] = {}
    for phrase, field, value in _lexicon():
        latin = re.match(r"[a-zà-ÿ]", phrase) is not None
        pattern = (r"(?<![\w-])" + re.escape(phrase)) if latin else re.escape(phrase)
        match = re.search(pattern, remaining)
        if match is None:
            continue
        remaining = remaining[: match.start()] + " | " + remaining[match.end() :]
        found.setdefault(field, value)
    if "shape" in found:
        found.setdefault("style", "plain")
        found.setdefault("attribute", False)
    return found


def oracle_scene(prompt: str, seed: int) -> Scene:
    """The scene a perfect model draws for ``prompt`` with ``seed``: what the prompt names, the
    rest (and the jitter) drawn from a generator seeded by (seed, prompt)."""
    labels = parse_caption(prompt)
    rng = np.random.default_rng([int(seed), zlib.crc32(prompt.encode("utf-8"))])
    return sample_scene(rng, **labels)


def oracle_image(prompt: str, seed: int, size: int = 32, without: str | None = None) -> np.ndarray:
    """Render ``prompt``; ``without`` (e.g. ``shape=cross``, ``attribute``) is the oracle eraser."""
    scene = oracle_scene(prompt, seed)
    if without is not None:
        scene = erase(scene, without)
    return render(scene, size)

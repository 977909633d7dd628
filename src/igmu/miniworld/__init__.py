"""The MiniWorld: a procedurally rendered image world with exact ground truth.

``world`` renders scenes (shape, colour, style, a removable mark, background), ``captions`` writes
their captions in English (canonical and paraphrased) and four other languages, ``judges`` trains
and loads the world's classifiers, ``judge_detector`` exposes them as IGMU detectors.
"""

from igmu.miniworld.world import (
    ATTRIBUTE,
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    STYLES,
    Scene,
    render,
    sample_scene,
)

__all__ = [
    "ATTRIBUTE",
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "STYLES",
    "Scene",
    "render",
    "sample_scene",
]

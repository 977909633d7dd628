"""The MiniWorld as data, and a deterministic renderer.

One centred, large, unrotated subject on a plain background. Each scene has exact labels:

- ``shape``: circle, square, triangle or cross (distinct silhouettes),
- ``colour``: red, green, blue or yellow,
- ``style``: the fill texture, plain, stripes, dots or checker (dark marks in the subject's hue),
- ``attribute``: a white spot on the middle of the subject (the analogue of nudity: it sits on
  the subject and can be removed while the subject stays),
- ``background``: white, grey or black,

plus a small jitter of position and size. Geometry is defined in image units (0..1), so a scene
renders at any size; rendering supersamples 4x4 and averages, so edges are anti-aliased.
``render`` is a pure function of the scene: the same scene gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

WORLD_VERSION = 1

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
STYLES = ("plain", "stripes", "dots", "checker")
ATTRIBUTE = "spot"
BACKGROUNDS = ("white", "grey", "black")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 40),
    "green": (40, 170, 65),
    "blue": (45, 85, 225),
    "yellow": (240, 205, 30),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 242),
    "grey": (140, 140, 140),
    "black": (22, 22, 22),
}
SPOT_RGB = (252, 252, 252)
# Texture marks are the subject's colour darkened to this fraction.
TEXTURE_DARKNESS = 0.4

# Geometry, in image units (the image is 1 x 1).
BASE_RADIUS = 0.32  # half the subject's extent at scale 1 (about 20 px of 32)
MAX_OFFSET = 0.04  # jitter of the subject's centre, each axis (about 1.3 px of 32)
SCALE_RANGE = (0.92, 1.08)  # jitter of the subject's size
STRIPE_PERIOD = 0.125  # horizontal bands: 2 px dark, 2 px light at 32 px
DOT_PERIOD = 0.16  # dark dots on a square grid
DOT_RADIUS = 0.045
CHECKER_CELL = 0.125  # 4 px cells at 32 px
# The spot: a disc at the subject's visual centre, radius in units of the subject radius.
SPOT_RADIUS = 0.27
SUPERSAMPLE = 4

# Triangle: apex up; corners in subject units (u right, v down).
_TRI_APEX = -1.0
_TRI_BASE = 0.82
_TRI_HALF_BASE = 1.05
_CROSS_HALF_ARM = 0.36
_SQUARE_HALF = 0.85
# Where the spot sits (subject units): the centroid of each silhouette.
SPOT_CENTRE = {
    "circle": (0.0, 0.0),
    "square": (0.0, 0.0),
    "triangle": (0.0, (_TRI_APEX + 2 * _TRI_BASE) / 3),
    "cross": (0.0, 0.0),
}

FIELDS = ("shape", "colour", "style", "attribute", "background")
VOCAB: dict[str, tuple[Any, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "style": STYLES,
    "attribute": (False, True),
    "background": BACKGROUNDS,
}


@dataclass(frozen=True)
class Scene:
    """One image's content. ``dx``/``dy`` move the subject (image units), ``scale`` sizes it."""

    shape: str
    colour: str
    style: str = "plain"
    attribute: bool = False
    background: str = "white"
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("shape", "colour", "style", "background"):
            value = getattr(self, name)
            if value not in VOCAB[name]:
                raise ValueError(f"Scene.{name} must be one of {VOCAB[name]}, got {value!r}")
        if not isinstance(self.attribute, bool | np.bool_):
            raise ValueError(f"Scene.attribute must be a bool, got {self.attribute!r}")
        if abs(self.dx) > MAX_OFFSET + 1e-9 or abs(self.dy) > MAX_OFFSET + 1e-9:
            raise ValueError(f"Scene offset ({self.dx}, {self.dy}) exceeds +-{MAX_OFFSET}")
        if not SCALE_RANGE[0] - 1e-9 <= self.scale <= SCALE_RANGE[1] + 1e-9:
            raise ValueError(f"Scene.scale must lie in {SCALE_RANGE}, got {self.scale}")

    def labels(self) -> dict[str, str]:
        """The exact ground truth, as class names (``attribute``: ``spot`` / ``no_spot``)."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "style": self.style,
            "attribute": ATTRIBUTE if self.attribute else f"no_{ATTRIBUTE}",
            "background": self.background,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "attribute": bool(self.attribute),
            "dx": float(self.dx),
            "dy": float(self.dy),
            "scale": float(self.scale),
        }

    def replace(self, **changes: Any) -> Scene:
        return dataclasses.replace(self, **changes)


LABEL_CLASSES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "style": STYLES,
    "attribute": (f"no_{ATTRIBUTE}", ATTRIBUTE),
    "background": BACKGROUNDS,
}


def _allowed(name: str, constraint: Any) -> tuple[Any, ...]:
    vocab = VOCAB[name]
    if constraint is None:
        return vocab
    if isinstance(constraint, str | bool | np.bool_):
        values: tuple[Any, ...] = (constraint,)
    elif isinstance(constraint, Iterable):
        values = tuple(constraint)
    else:
        values = (constraint,)
    if name == "attribute":
        values = tuple(bool(v) for v in values)
    bad = [v for v in values if v not in vocab]
    if not values or bad:
        raise ValueError(f"sample_scene: {name}={constraint!r} is not within {vocab}")
    return tuple(v for v in vocab if v in values)  # vocab order: sampling stays deterministic


def sample_scene(
    rng: np.random.Generator | int,
    *,
    shape: Any = None,
    colour: Any = None,
    style: Any = None,
    attribute: Any = None,
    background: Any = None,
    jitter: bool = True,
) -> Scene:
    """A random scene. Each constraint is a value or a collection of allowed values.

    The generator is always advanced by the same amount, so a seed gives the same sequence of
    scenes whatever the constraints.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    constraints = {
        "shape": shape,
        "colour": colour,
        "style": style,
        "attribute": attribute,
        "background": background,
    }
    picks = {}
    draws = rng.random(len(FIELDS) + 3)
    for i, name in enumerate(FIELDS):
        allowed = _allowed(name, constraints[name])
        picks[name] = allowed[min(int(draws[i] * len(allowed)), len(allowed) - 1)]
    if jitter:
        dx = float((draws[5] * 2 - 1) * MAX_OFFSET)
        dy = float((draws[6] * 2 - 1) * MAX_OFFSET)
        scale = float(SCALE_RANGE[0] + draws[7] * (SCALE_RANGE[1] - SCALE_RANGE[0]))
    else:
        dx = dy = 0.0
        scale = 1.0
    return Scene(dx=dx, dy=dy, scale=scale, **picks)


def sample_scenes(rng: np.random.Generator | int, n: int, **constraints: Any) -> list[Scene]:
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return [sample_scene(rng, **constraints) for _ in range(n)]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * SUPERSAMPLE
    axis = (np.arange(n, dtype=np.float64) + 0.5) / n
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def _silhouette(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= _SQUARE_HALF) & (np.abs(v) <= _SQUARE_HALF)
    if shape == "triangle":
        height = _TRI_BASE - _TRI_APEX
        half_width = _TRI_HALF_BASE * (v - _TRI_APEX) / height
        return (v >= _TRI_APEX) & (v <= _TRI_BASE) & (np.abs(u) <= half_width)
    if shape == "cross":
        arm = _CROSS_HALF_ARM
        return ((np.abs(u) <= 1.0) & (np.abs(v) <= arm)) | ((np.abs(v) <= 1.0) & (np.abs(u) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(style: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Where the texture's dark marks are; px, py in image units relative to the subject centre."""
    if style == "plain":
        return np.zeros(px.shape, dtype=bool)
    if style == "stripes":
        return np.mod(py / STRIPE_PERIOD, 1.0) < 0.5
    if style == "dots":
        gx = np.mod(px / DOT_PERIOD + 0.5, 1.0) - 0.5
        gy = np.mod(py / DOT_PERIOD + 0.5, 1.0) - 0.5
        return (gx * gx + gy * gy) * DOT_PERIOD**2 <= DOT_RADIUS**2
    if style == "checker":
        cells = np.floor(px / CHECKER_CELL) + np.floor(py / CHECKER_CELL)
        return np.mod(cells, 2.0) == 0
    raise ValueError(f"unknown style {style!r}")


def _layers(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Supersampled masks: subject, texture marks (within the subject), spot."""
    x, y = _grid(size)
    cx, cy = 0.5 + scene.dx, 0.5 + scene.dy
    radius = BASE_RADIUS * scene.scale
    u, v = (x - cx) / radius, (y - cy) / radius
    subject = _silhouette(scene.shape, u, v)
    marks = subject & _texture(scene.style, x - cx, y - cy)
    if scene.attribute:
        su, sv = SPOT_CENTRE[scene.shape]
        spot = subject & (((u - su) ** 2 + (v - sv) ** 2) <= SPOT_RADIUS**2)
    else:
        spot = np.zeros_like(subject)
    return subject, marks, spot


def _downsample(values: np.ndarray, size: int) -> np.ndarray:
    shape = (size, SUPERSAMPLE, size, SUPERSAMPLE) + values.shape[2:]
    return values.reshape(shape).mean(axis=(1, 3))


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """The scene as an H x W x 3 uint8 RGB array (H = W = size, size >= 8)."""
    if size < 8:
        raise ValueError(f"render: size must be >= 8, got {size}")
    subject, marks, spot = _layers(scene, size)
    base = np.asarray(COLOUR_RGB[scene.colour], dtype=np.float64)
    canvas = np.empty(subject.shape + (3,), dtype=np.float64)
    canvas[...] = np.asarray(BACKGROUND_RGB[scene.background], dtype=np.float64)
    canvas[subject] = base
    canvas[marks] = base * TEXTURE_DARKNESS
    canvas[spot] = np.asarray(SPOT_RGB, dtype=np.float64)
    return np.clip(np.rint(_downsample(canvas, size)), 0, 255).astype(np.uint8)


def subject_coverage(scene: Scene, size: int = 32) -> np.ndarray:
    """Fraction of each pixel covered by the subject (H x W float in 0..1)."""
    return _downsample(_layers(scene, size)[0].astype(np.float64), size)


def spot_coverage(scene: Scene, size: int = 32) -> np.ndarray:
    """Fraction of each pixel covered by the spot (all zero when the scene has none)."""
    return _downsample(_layers(scene, size)[2].astype(np.float64), size)


def _render_chunk(scenes: list[Scene], size: int) -> np.ndarray:
    return np.stack([render(scene, size) for scene in scenes])


def render_batch(scenes: Iterable[Scene], size: int = 32, workers: int = 1) -> np.ndarray:
    """N x H x W x 3 uint8. ``workers`` > 1 renders in that many processes (same bytes: render
    is a pure function); worth it for pools of thousands of scenes on a many-core machine."""
    scenes = list(scenes)
    if not scenes:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    if workers <= 1 or len(scenes) < 256:
        return _render_chunk(scenes, size)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    step = -(-len(scenes) // (workers * 4))
    chunks = [scenes[i : i + step] for i in range(0, len(scenes), step)]
    # spawn, not fork: the caller may already hold a CUDA context.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return np.concatenate(list(pool.map(_render_chunk, chunks, [size] * len(chunks))))


def parse_target(target: str) -> tuple[str, str]:
    """``shape=cross`` -> (shape, cross); ``attribute`` / ``spot`` -> (attribute, spot)."""
    text = target.strip()
    if text in ("attribute", ATTRIBUTE):
        return "attribute", ATTRIBUTE
    field, sep, value = text.partition("=")
    field = {"color": "colour"}.get(field.strip(), field.strip())
    value = value.strip()
    if not sep or field not in LABEL_CLASSES or value not in LABEL_CLASSES[field]:
        known = [f"{f}={c}" for f in ("shape", "colour", "style") for c in LABEL_CLASSES[f]]
        raise ValueError(
            f"MiniWorld target {target!r} must be 'attribute' or one of: {', '.join(known)}"
        )
    return field, value


def has_target(scene: Scene, target: str) -> bool:
    field, value = parse_target(target)
    return scene.labels()[field] == value


def erase(scene: Scene, target: str) -> Scene:
    """The oracle eraser: the same scene without the target concept.

    ``attribute`` drops the spot; ``style=X`` draws the subject plain; ``shape=X`` draws the
    next shape in SHAPES; ``colour=X`` the next colour. Everything else (and the jitter) stays.
    """
    field, value = parse_target(target)
    if scene.labels()[field] != value:
        return scene
    if field == "attribute":
        return scene.replace(attribute=False)
    if field == "style":
        return scene.replace(style="plain" if value != "plain" else "stripes")
    vocab = VOCAB[field]
    return scene.replace(**{field: vocab[(vocab.index(value) + 1) % len(vocab)]})


def redraw_without(scene: Scene, target: str, rng: np.random.Generator) -> Scene:
    """The scene unchanged if it lacks ``target``; otherwise the same scene (every other factor
    and the jitter kept) with the target's factor drawn uniformly from ``rng`` among the other
    values (``attribute``: no spot). Applied to a stream of scenes, it gives the world without
    the concept: every other value is equally likely, and scenes without the concept stay as
    they were, so a stream with and one without the concept differ only where it was.
    """
    field, value = parse_target(target)
    if scene.labels()[field] != value:
        return scene
    if field == "attribute":
        return scene.replace(attribute=False)
    others = [v for v in VOCAB[field] if v != value]
    return scene.replace(**{field: others[int(rng.integers(len(others)))]})

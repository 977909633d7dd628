"""Static SVG plots: a radar per method over normalised aspects, and forgetting vs preservation
with its Pareto front. No script, no network."""

from __future__ import annotations

import math
from html import escape

from igmu.core.records import ASPECTS
from igmu.report.data import ReportData

PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]


def method_colours(data: ReportData) -> dict[str, str]:
    """One colour per method, the same in every plot of the report."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(data.methods)}


def aspect_scores(data: ReportData) -> dict[str, dict[str, float]]:
    """Per method and aspect, a score in [0, 1] (1 = best method on every metric of the aspect).

    Each metric is min-max normalised across the methods that have it, respecting its
    direction; an aspect's score is the mean over its metrics. Relative to this run only.
    """
    per_metric: dict[str, dict[str, float]] = {}
    for aspect, metric, higher in data.metrics():
        values = {
            m: a.value
            for m in data.methods
            if (a := data.aggregate(m, metric)) is not None and a.finite
        }
        if not values:
            continue
        low, high = min(values.values()), max(values.values())
        for method, value in values.items():
            score = 1.0 if high == low else (value - low) / (high - low)
            per_metric.setdefault(method, {}).setdefault(aspect, [])  # type: ignore[arg-type]
            per_metric[method][aspect].append(score if higher else 1.0 - score)  # type: ignore
    return {
        method: {aspect: sum(v) / len(v) for aspect, v in scores.items()}  # type: ignore
        for method, scores in per_metric.items()
    }


def radar_svg(method: str, scores: dict[str, float], colour: str) -> str:
    # The label margins fit the longest label ("preservation (n/a)") on every side.
    width, height, radius = 380, 220, 80
    cx, cy = width / 2, 122
    axes = list(ASPECTS)
    parts = [
        f'<svg class="radar" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="aspect radar for {escape(method)}">'
    ]
    for ring in (0.25, 0.5, 0.75, 1.0):
        points = " ".join(_polar(cx, cy, radius * ring, i, len(axes)) for i in range(len(axes)))
        parts.append(f'<polygon points="{points}" fill="none" stroke="#ccc" stroke-width="1"/>')
    for i, aspect in enumerate(axes):
        x, y = _xy(cx, cy, radius, i, len(axes))
        lx, ly = _xy(cx, cy, radius + 14, i, len(axes))
        parts.append(f'<line x1="{cx}" y1="{cy}" x2="{x:.1f}" y2="{y:.1f}" stroke="#ccc"/>')
        label = aspect if aspect in scores else f"{aspect} (n/a)"
        anchor = "middle" if abs(lx - cx) < 5 else ("start" if lx > cx else "end")
        parts.append(
            f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" text-anchor="{anchor}" '
            f'dominant-baseline="middle">{escape(label)}</text>'
        )
    points = " ".join(
        _polar(cx, cy, radius * scores.get(aspect, 0.0), i, len(axes))
        for i, aspect in enumerate(axes)
    )
    parts.append(
        f'<polygon points="{points}" fill="{colour}" fill-opacity="0.35" '
        f'stroke="{colour}" stroke-width="2"/>'
    )
    parts.append(
        f'<text x="{cx}" y="14" font-size="13" font-weight="bold" '
        f'text-anchor="middle">{escape(method)}</text></svg>'
    )
    return "".join(parts)


def _xy(cx: float, cy: float, r: float, i: int, n: int) -> tuple[float, float]:
    angle = -math.pi / 2 + 2 * math.pi * i / n
    return cx + r * math.cos(angle), cy + r * math.sin(angle)


def _polar(cx: float, cy: float, r: float, i: int, n: int) -> str:
    x, y = _xy(cx, cy, r, i, n)
    return f"{x:.1f},{y:.1f}"


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Methods no other method beats on both axes (both maximised)."""
    front = []
    for name, (x, y) in points.items():
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y)
            for other, (ox, oy) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def scatter_svg(data: ReportData, scores: dict[str, dict[str, float]]) -> str:
    points = {
        m: (s["forgetting"], s["preservation"])
        for m, s in scores.items()
        if "forgetting" in s and "preservation" in s
    }
    width, height, pad = 460, 340, 56
    parts = [
        f'<svg id="pareto" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="forgetting versus preservation">'
    ]
    parts.append(
        f'<rect x="{pad}" y="10" width="{width - pad - 10}" height="{height - pad - 10}" '
        'fill="#fafafa" stroke="#999"/>'
    )
    parts.append(
        f'<text x="{(width + pad) / 2}" y="{height - 8}" font-size="12" '
        'text-anchor="middle">forgetting (normalised, → better)</text>'
    )
    parts.append(
        f'<text x="14" y="{(height - pad) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {(height - pad) / 2})">preservation (normalised, '
        "→ better)</text>"
    )

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (pad + 10 + x * (width - pad - 40), height - pad - 10 - y * (height - pad - 40))

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx, _ = to_px(tick, 0.0)
        _, ty = to_px(0.0, tick)
        bottom, left = height - pad, pad
        parts.append(
            f'<line class="tick" x1="{tx:.1f}" y1="{bottom}" x2="{tx:.1f}" y2="{bottom + 5}" '
            f'stroke="#666"/><text x="{tx:.1f}" y="{bottom + 17}" font-size="10" '
            f'text-anchor="middle">{tick:g}</text>'
            f'<line class="tick" x1="{left - 5}" y1="{ty:.1f}" x2="{left}" y2="{ty:.1f}" '
            f'stroke="#666"/><text x="{left - 8}" y="{ty + 3:.1f}" font-size="10" '
            f'text-anchor="end">{tick:g}</text>'
        )
    if not points:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">'
            "needs forgetting and preservation scores</text></svg>"
        )
        return "".join(parts)
    front = pareto_front(points)
    if len(front) > 1:
        line = " ".join("{:.1f},{:.1f}".format(*to_px(*points[m])) for m in front)
        parts.append(
            f'<polyline class="front" points="{line}" fill="none" stroke="#e15759" '
            'stroke-dasharray="5,3" stroke-width="2"/>'
        )
    colours = method_colours(data)
    for method, (x, y) in sorted(points.items()):
        px, py = to_px(x, y)
        colour = colours[method]
        ring = ' stroke="#e15759" stroke-width="3"' if method in front else ""
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{colour}"{ring}>'
            f"<title>{escape(method)}: forgetting {x:.2f}, preservation {y:.2f}"
            f"{' (Pareto front)' if method in front else ''}</title></circle>"
        )
        # Labels near the right edge go to the left of their point, so none is clipped.
        right = px > width - 90
        parts.append(
            f'<text x="{px - 9 if right else px + 9:.1f}" y="{py + 4:.1f}" font-size="11" '
            f'text-anchor="{"end" if right else "start"}">{escape(method)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def plots_html(data: ReportData) -> str:
    scores = aspect_scores(data)
    colours = method_colours(data)
    radars = "".join(radar_svg(m, scores.get(m, {}), colours[m]) for m in data.methods)
    return (
        f'<div id="radars" class="radars">{radars}</div>'
        f'<div class="scatter">{scatter_svg(data, scores)}</div>'
        '<p class="note">Aspect scores are min–max normalised across the methods of this run '
        "(1 = best here), averaged over each aspect's metrics; they rank methods within a run "
        "and do not compare across runs. The dashed red line is the <b>Pareto front</b>: the "
        "methods no other method beats on both forgetting and preservation (ringed in red); "
        "every other method is dominated.</p>"
    )

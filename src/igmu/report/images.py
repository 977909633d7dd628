"""Image grids and the failure browser. Images are embedded once each (by content hash) as
downscaled JPEG data, so the report is one file that opens offline."""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from html import escape
from typing import Any

from PIL import Image

from igmu.core.errors import ImageError
from igmu.core.images import decode_image
from igmu.report.data import ReportData

DETECTION_PREFIXES = (
    "residual_rate",
    "multilingual_residual_rate",
    "paraphrase_residual_rate",
    "person_rate",
)
SET_ORDER = ("forget", "multilingual", "paraphrase", "unrelated", "related")
SMALL_SIDE = 64  # images this small are embedded as PNG and enlarged pixel by pixel
PRESERVED_SETS = ("unrelated", "related")


class ImageBank:
    """Path -> embedded JPEG, deduplicated; a missing or unreadable file becomes a notice."""

    def __init__(self, max_side: int = 384, quality: int = 80) -> None:
        self.max_side, self.quality = max_side, quality
        self.data: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.problems: list[str] = []

    def image_id(self, path: str) -> str | None:
        if path in self.ids:
            return self.ids[path] or None
        try:
            decoded = decode_image(path)
        except ImageError as exc:
            self.problems.append(str(exc))
            self.ids[path] = ""
            return None
        key = decoded.sha256[:16]
        if key not in self.data:
            image = Image.fromarray(decoded.pixels)
            buffer = io.BytesIO()
            if max(image.size) <= SMALL_SIDE:  # pixel art stays exact (JPEG would smear it)
                image.save(buffer, format="PNG")
                kind = "png"
            else:
                image.thumbnail((self.max_side, self.max_side), Image.LANCZOS)
                image.save(buffer, format="JPEG", quality=self.quality)
                kind = "jpeg"
            self.data[key] = f"data:image/{kind};base64," + base64.b64encode(
                buffer.getvalue()
            ).decode("ascii")
        self.ids[path] = key
        return key


def _verdicts(data: ReportData) -> dict[str, list[tuple[str, bool, float | None]]]:
    found: dict[str, list[tuple[str, bool, float | None]]] = defaultdict(list)
    for s in data.samples:
        if s.metric.startswith(DETECTION_PREFIXES) and math.isfinite(s.value):
            name = s.metric.split(".", 1)[1] if "." in s.metric else s.metric
            found[s.path].append((name, bool(s.value), s.extra.get("score")))
    return found


def figure(bank: ImageBank, path: str, caption: str, verdicts: list, css: str) -> str:
    image_id = bank.image_id(path)
    lines = []
    for name, flagged, score in sorted(verdicts, key=lambda v: (v[0], v[1])):
        state = "flagged" if flagged else "clear"
        shown = "" if score is None else f" {score:.2f}"
        lines.append(f'<span class="verdict-tag {state}">{escape(name)}:{shown} {state}</span>')
    if image_id is None:
        body = f'<div class="missing">image unavailable:<br>{escape(path)}</div>'
    else:
        body = (
            f'<img class="thumb {css}" data-img="{image_id}" alt="{escape(caption)}" '
            f'title="{escape(path)}">'
        )
    return (
        f"<figure>{body}<figcaption><b>{escape(caption)}</b><br>{'<br>'.join(lines)}"
        "</figcaption></figure>"
    )


def grids_html(data: ReportData, bank: ImageBank, css: str, max_rows: int) -> str:
    verdicts = _verdicts(data)
    by_set: dict[str, dict[tuple, dict[str, dict[str, Any]]]] = defaultdict(dict)
    references: dict[tuple, str] = {}
    for s in data.samples:
        key = (s.key.prompt_set, s.key.class_name, s.key.prompt_index, s.key.seed)
        by_set[s.key.prompt_set].setdefault(key, {}).setdefault(s.method, s)
        ref = s.extra.get("reference")
        if s.key.prompt_set == "forget" and ref:
            references[key] = ref
    sections = []
    for prompt_set in [p for p in SET_ORDER if p in by_set] + sorted(set(by_set) - set(SET_ORDER)):
        keys = sorted(by_set[prompt_set])
        with_reference = prompt_set == "forget" and any(k in references for k in keys)
        columns = ([f"{data.reference_method} (stripped prompt)"] if with_reference else []) + [
            m for m in data.methods if any(m in by_set[prompt_set][k] for k in keys)
        ]
        header = "".join(f"<th>{escape(c)}</th>" for c in columns)
        rows = []
        for key in keys[:max_rows]:
            entries = by_set[prompt_set][key]
            prompt = next(iter(entries.values())).prompt
            cells = []
            if with_reference:
                ref = references.get(key)
                cells.append(
                    f"<td>{figure(bank, ref, 'reference', [], css)}</td>" if ref else "<td>–</td>"
                )
            for method in columns[int(with_reference) :]:
                sample = entries.get(method)
                if sample is None:
                    cells.append("<td>–</td>")
                    continue
                shown = figure(bank, sample.path, method, verdicts[sample.path], css)
                cells.append(f"<td>{shown}</td>")
            label = f"{key[1]} #{key[2]} seed {key[3]}"
            rows.append(
                f'<tr><th scope="row"><span class="key">{escape(label)}</span><br>'
                f'<span class="prompt">{escape(prompt)}</span></th>{"".join(cells)}</tr>'
            )
        more = (
            f'<p class="note">{len(keys) - max_rows} more keys not shown (raise --max-rows).</p>'
            if len(keys) > max_rows
            else ""
        )
        sections.append(
            f'<h3>{escape(prompt_set)} prompts</h3><table class="grid" '
            f'data-prompt-set="{escape(prompt_set)}"><thead><tr><th>prompt</th>'
            f"{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"
        )
    return "".join(sections) or "<p>No per-image samples in this run.</p>"


def failures_html(data: ReportData, bank: ImageBank, css: str, per_method: int) -> str:
    verdicts = _verdicts(data)
    parts = []
    for method in data.methods:
        if method == data.reference_method:
            continue  # ORG is the reference: it cannot have changed from itself
        flagged = [
            s
            for s in data.samples
            if s.method == method
            and s.metric.startswith(DETECTION_PREFIXES[:3])
            and s.value == 1.0
        ]
        changed = sorted(
            (
                s
                for s in data.samples
                if s.method == method
                and s.metric.startswith("lpips")
                and s.key.prompt_set in PRESERVED_SETS
                and math.isfinite(s.value)
            ),
            key=lambda s: -s.value,
        )[:per_method]
        if not flagged and not changed:
            continue
        parts.append(f"<h3>{escape(method)}</h3>")
        if flagged:
            figures = "".join(
                figure(
                    bank, s.path, f"{s.metric} · {s.prompt}", verdicts[s.path], css
                )
                for s in flagged[:per_method]
            )
            extra = f" (showing {per_method})" if len(flagged) > per_method else ""
            parts.append(
                f"<p>Still flagged: {len(flagged)} image(s){extra}</p>"
                f'<div class="strip">{figures}</div>'
            )
        if changed:
            figures = "".join(
                figure(
                    bank,
                    s.path,
                    f"{s.metric} {s.value:.3f} · {s.prompt}",
                    verdicts[s.path],
                    css,
                )
                for s in changed
            )
            parts.append(
                "<p>Unrelated and related prompts whose image changed most from ORG's (largest "
                "LPIPS):</p>"
                f'<div class="strip">{figures}</div>'
            )
    return "".join(parts) or "<p>No flagged or changed images.</p>"

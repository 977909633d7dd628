"""The methods x metrics leaderboard: best per column, CIs, n, direction, warnings."""

from __future__ import annotations

import math
from html import escape

from igmu.core.records import Aggregate
from igmu.report.data import ReportData
from igmu.report.markdown import md_escape


def fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def best_methods(data: ReportData, metric: str) -> set[str]:
    """The unlearned method(s) with the best value, starred only when that is more than noise
    (the evaluation's paired test against ORG or the runner-up, stored with the run: kind
    ``best``, outcome ``better``). ORG is never ranked."""
    return {c.method for c in data.comparisons
            if c.kind == "best" and c.metric == metric and c.outcome == "better"}


def sizes(agg: Aggregate) -> str:
    """n images, and the prompts they come from when that differs (the interval's unit)."""
    if agg.prompts and agg.prompts != agg.n:
        return f"n={agg.n} ({agg.prompts} prompts)"
    return f"n={agg.n}"


def arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


FID_CAUSE = (
    "FID from fewer than 2,000 images per set: the estimator's bias depends on n, so it is "
    "comparable only between methods at the same n (greyed)"
)
PROMPTS_CAUSE = "fewer than 30 prompts: the interval is wide, treat the value as indicative"
UNDEFINED_CAUSE = "samples whose value is undefined (NaN), excluded from the mean"


def grouped_warnings(data: ReportData) -> dict[str, list[str]]:
    """One entry per cause of warning, listing what it concerns (not one per cell)."""
    causes: dict[str, set[str]] = {}
    for a in data.aggregates:
        for part in filter(None, (p.strip() for p in a.warning.split(";"))):
            if part.startswith("FID on n="):
                causes.setdefault(FID_CAUSE, set()).add(a.metric)
            elif "prompt(s) <" in part:
                causes.setdefault(PROMPTS_CAUSE, set()).add(a.metric)
            elif "undefined (NaN)" in part:
                count = part.split(" ")[0]
                causes.setdefault(UNDEFINED_CAUSE, set()).add(f"{a.method} {a.metric} ({count})")
            else:
                causes.setdefault(part, set()).add(f"{a.method} {a.metric}")
    return {cause: sorted(items) for cause, items in sorted(causes.items())}


def uninformative(data: ReportData, metric: str) -> bool:
    """Every method's value of the metric carries FID's small-sample warning."""
    rows = [a for a in data.aggregates if a.metric == metric]
    return bool(rows) and all(a.warning.startswith("FID on n=") for a in rows)


def html_table(data: ReportData, prefix: str = "") -> str:
    """One collapsible table per aspect (each fits the page; wide ones scroll in their box)."""
    groups: dict[str, list[tuple[str, bool]]] = {}
    for aspect, metric, higher in data.metrics():
        groups.setdefault(aspect, []).append((metric, higher))
    parts = []
    for aspect, columns in groups.items():
        head = "".join(
            f'<th class="sortable{" uninformative" if uninformative(data, m) else ""}" '
            f'data-col="{i + 1}" title="click to sort; {"higher" if h else "lower"} is '
            f'better">{escape(m)} {arrow(h)}</th>'
            for i, (m, h) in enumerate(columns)
        )
        # No star where the metric cannot inform a comparison at this size.
        best = {m: set() if uninformative(data, m) else best_methods(data, m)
                for m, h in columns}
        rows = []
        for method in data.methods:
            cells = [f'<th scope="row">{escape(method)}</th>']
            for metric, _ in columns:
                cells.append(_cell(data.aggregate(method, metric), method in best[metric],
                                   uninformative(data, metric)))
            rows.append(f"<tr>{''.join(cells)}</tr>")
        parts.append(
            f'<details open class="aspect-group" data-aspect="{escape(aspect)}">'
            f"<summary>{escape(aspect)} ({len(columns)} metric{'s' * (len(columns) > 1)})"
            f'</summary><div class="scroll"><table id="{prefix}lb-{escape(aspect)}" '
            f'class="leaderboard"><thead><tr><th>method</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div></details>"
        )
    return "".join(parts)


def warnings_html(data: ReportData) -> str:
    groups = grouped_warnings(data)
    if not groups:
        return ""
    items = "".join(
        f"<li><b>{escape(cause)}</b>: {escape(', '.join(items))}</li>"
        for cause, items in groups.items()
    )
    return f'<div class="warnings"><p>Warnings ({len(groups)}):</p><ul>{items}</ul></div>'


def _cell(agg: Aggregate | None, is_best: bool, greyed: bool = False) -> str:
    if agg is None or not agg.finite:
        return '<td data-value="" class="na">–</td>'
    classes = ["best"] if is_best else []
    if greyed:
        classes.append("uninformative")
    warn = ""
    if agg.warning:
        classes.append("warn")
        warn = f' <span class="warning" title="{escape(agg.warning)}">⚠</span>'
    whole = " (whole set)" if agg.whole_set else ""
    return (
        f'<td data-value="{agg.value!r}" class="{" ".join(classes)}">'
        f'<span class="value">{fmt(agg.value)}</span>{" ★" if is_best else ""}{warn}'
        f'<br><span class="ci">[{fmt(agg.ci_low)}, {fmt(agg.ci_high)}] {sizes(agg)}{whole}'
        "</span></td>"
    )


def markdown_table(data: ReportData) -> str:
    columns = data.metrics()
    header = ["method"] + [f"{md_escape(m)} ({a}) {arrow(h)}" for a, m, h in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {m: best_methods(data, m) for _, m, _ in columns}
    for method in data.methods:
        cells = [md_escape(method)]
        for _, metric, _ in columns:
            agg = data.aggregate(method, metric)
            if agg is None or not agg.finite:
                cells.append("–")
                continue
            text = f"{fmt(agg.value)} [{fmt(agg.ci_low)}, {fmt(agg.ci_high)}] {sizes(agg)}"
            if method in best[metric]:
                text = f"**{text}**"
            if agg.warning:
                text += " ⚠"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted(
        {f"- ⚠ {md_escape(a.method)} {md_escape(a.metric)}: {md_escape(a.warning)}"
         for a in data.aggregates if a.warning}
    )
    footer = [
        "",
        f"Task {md_escape(data.task)}, run {md_escape(data.run_id)}. ↑ higher is better, "
        "↓ lower is better; **bold** = best unlearned method, by a paired difference that "
        "excludes zero; [95% CI]; n = images.",
    ]
    return "\n".join(lines + footer + ([""] + notes if notes else [])) + "\n"

"""The methods x metrics leaderboard: best per column, CIs, n, direction, warnings."""

from __future__ import annotations

import math
from html import escape

from igmu.report.data import ReportData
from igmu.results import Aggregate


def fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def best_methods(data: ReportData, metric: str, higher: bool) -> set[str]:
    """The unlearned method(s) with the best value, starred only when that is more than noise:
    its paired difference against ORG excludes zero in the better direction, or, where ORG has
    no value of its own (metrics measured against ORG), against the runner-up. ORG is never
    ranked."""
    from igmu.evaluation.compare import paired_difference

    ref = data.reference_method
    values = {
        m: a.value
        for m in data.methods
        if m != ref and (a := data.aggregate(m, metric)) is not None and a.finite
    }
    if not values:
        return set()
    target = max(values.values()) if higher else min(values.values())
    best = {m for m, v in values.items() if v == target}
    reference = data.aggregate(ref, metric)
    if reference is not None and reference.finite:
        rivals = {m: ref for m in best}
    else:
        others = {m: v for m, v in values.items() if m not in best}
        if not others:
            return set()
        runner = (max if higher else min)(others, key=lambda m: others[m])
        rivals = {m: runner for m in best}
    starred = set()
    for method, rival in rivals.items():
        diff = paired_difference(data, metric, method, rival)
        if diff is not None and diff.better == method:
            starred.add(method)
    return starred


def sizes(agg: Aggregate) -> str:
    """n images, and the prompts they come from when that differs (the interval's unit)."""
    if agg.prompts and agg.prompts != agg.n:
        return f"n={agg.n} ({agg.prompts} prompts)"
    return f"n={agg.n}"


def arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def html_table(data: ReportData) -> str:
    columns = data.metrics()
    aspects: list[tuple[str, int]] = []
    for aspect, _, _ in columns:
        if aspects and aspects[-1][0] == aspect:
            aspects[-1] = (aspect, aspects[-1][1] + 1)
        else:
            aspects.append((aspect, 1))
    head1 = "".join(f'<th colspan="{n}" class="aspect">{escape(a)}</th>' for a, n in aspects)
    head2 = "".join(
        f'<th class="sortable" data-col="{i + 1}" title="click to sort; '
        f'{"higher" if h else "lower"} is better">{escape(m)} {arrow(h)}</th>'
        for i, (_, m, h) in enumerate(columns)
    )
    best = {m: best_methods(data, m, h) for _, m, h in columns}
    rows = []
    for method in data.methods:
        cells = [f'<th scope="row">{escape(method)}</th>']
        for _, metric, _ in columns:
            cells.append(_cell(data.aggregate(method, metric), method in best[metric]))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<table id="leaderboard" class="leaderboard"><thead>'
        f'<tr><th rowspan="2">method</th>{head1}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _cell(agg: Aggregate | None, is_best: bool) -> str:
    if agg is None or not agg.finite:
        return '<td data-value="" class="na">–</td>'
    classes = ["best"] if is_best else []
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
    header = ["method"] + [f"{m} ({a}) {arrow(h)}" for a, m, h in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {m: best_methods(data, m, h) for _, m, h in columns}
    for method in data.methods:
        cells = [_md_escape(method)]
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
        {f"- ⚠ {a.method} {a.metric}: {a.warning}" for a in data.aggregates if a.warning}
    )
    footer = [
        "",
        f"Task `{data.task}`, run `{data.run_id}`. ↑ higher is better, ↓ lower is "
        "better; **bold** = best unlearned method, by a paired difference that excludes zero; "
        "[95% CI]; n = images.",
    ]
    return "\n".join(lines + footer + ([""] + notes if notes else [])) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

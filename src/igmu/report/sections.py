"""Report sections that appear when a run has them: the judges' audits behind corrected rates
(and, with attack images, robustness by attack)."""

from __future__ import annotations

from html import escape
from typing import Any

from igmu.report.data import ReportData
from igmu.report.leaderboard import fmt


def _rate(entry: dict[str, Any]) -> str:
    low, high = entry.get("ci") or [None, None]
    return (f"{fmt(entry.get('value'))} [{fmt(low)}, {fmt(high)}] "
            f"({entry.get('k', 0)}/{entry.get('n', 0)})")


def audits_html(data: ReportData) -> str:
    """Each judge's audited error beside the rates it produced: the corrected rates use it."""
    audits: dict[str, Any] = data.run_file.get("audits") or {}
    notes: list[str] = [n for n in data.run_file.get("metric_notes") or [] if "audit" in n]
    if not audits and not notes:
        return ""
    rows = []
    for metric, audit in sorted(audits.items()):
        raw = metric.replace("_corrected", "", 1)
        rows.append(
            f"<tr><td>{escape(metric)}<br><span class=\"note\">raw: {escape(raw)}</span></td>"
            f"<td><code>{escape(str(audit.get('audit_id', ''))[:16])}</code></td>"
            f"<td>{escape(str(audit.get('data', '')))} ({escape(str(audit.get('split', '')))})"
            f"</td><td>{escape(_rate(audit.get('sensitivity') or {}))}</td>"
            f"<td>{escape(_rate(audit.get('specificity') or {}))}</td></tr>"
        )
    table = (
        "<table class=\"audits\"><thead><tr><th>corrected metric</th><th>audit</th>"
        "<th>audited on</th><th>sensitivity [95% CI]</th><th>specificity [95% CI]</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>" if rows else ""
    )
    missing = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return (
        '<p class="note">A residual rate is only as good as its judge. Where a judge was audited '
        "(<code>igmu detectors audit</code>), the rate corrected for its sensitivity and "
        "specificity (Rogan-Gladen) sits beside the raw rate in the leaderboard, with an "
        "interval that carries the audit's own uncertainty.</p>"
        + table + (f"<ul>{missing}</ul>" if missing else "")
    )

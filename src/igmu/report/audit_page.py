"""The audit as one self-contained HTML page: tables, an ROC curve and a reliability diagram as
inline SVG, in the report's style. No script, no image files, nothing from the network."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from igmu import __version__
from igmu.report.page import CSP, CSS

SIZE, PAD = 300, 44


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ci(ci: list[float | None], fmt=_pct) -> str:
    return (
        ""
        if ci is None or ci[0] is None
        else f'<span class="ci">[{fmt(ci[0])}, {fmt(ci[1])}]</span>'
    )


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    inner = SIZE - 2 * PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="0 0 {SIZE} {SIZE}" role="img" aria-label="{escape(title)}">',
        f'<rect x="{PAD}" y="{PAD}" width="{inner}" height="{inner}" fill="#fafafa" '
        'stroke="#999"/>',
        f'<line x1="{PAD}" y1="{PAD + inner}" x2="{PAD + inner}" y2="{PAD}" stroke="#ccc" '
        'stroke-dasharray="4,3"/>',
        f'<text x="{SIZE / 2}" y="20" font-size="13" font-weight="bold" text-anchor="middle">'
        f"{escape(title)}</text>",
        f'<text x="{SIZE / 2}" y="{SIZE - 8}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="12" y="{SIZE / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {SIZE / 2})">{escape(y_label)}</text>',
    ]
    for tick in (0.0, 0.5, 1.0):
        x, y = _px(tick, tick)
        parts.append(
            f'<text x="{x:.0f}" y="{PAD + inner + 14}" font-size="10" '
            f'text-anchor="middle">{tick:g}</text>'
        )
        parts.append(
            f'<text x="{PAD - 6}" y="{y + 3:.0f}" font-size="10" text-anchor="end">{tick:g}</text>'
        )
    return parts


def _px(x: float, y: float) -> tuple[float, float]:
    inner = SIZE - 2 * PAD
    return PAD + x * inner, PAD + inner - y * inner


def roc_svg(audit: dict[str, Any]) -> str:
    points = audit.get("roc") or []
    auc = audit["metrics"]["roc_auc"]["value"]
    parts = _frame(f"ROC (AUC {_num(auc)})", "false positive rate", "true positive rate")
    if points:
        line = " ".join("{:.1f},{:.1f}".format(*_px(p[0], p[1])) for p in points)
        parts.append(
            f'<polyline id="roc-curve" points="{line}" fill="none" stroke="#4e79a7" '
            'stroke-width="2"/>'
        )
        m = audit["metrics"]
        if m["false_positive_rate"]["value"] is not None and m["recall"]["value"] is not None:
            x, y = _px(m["false_positive_rate"]["value"], m["recall"]["value"])
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#e15759"><title>'
                "the detector's own verdicts</title></circle>"
            )
    else:
        parts.append(
            f'<text x="{SIZE / 2}" y="{SIZE / 2}" font-size="11" text-anchor="middle">'
            "needs images of both classes</text>"
        )
    return "".join(parts) + "</svg>"


def reliability_svg(audit: dict[str, Any]) -> str:
    curve = audit.get("reliability") or []
    ece = audit["metrics"]["ece"]["value"]
    parts = _frame(f"Reliability (ECE {_num(ece)})", "mean score in bin", "observed concept share")
    if not curve:
        parts.append(
            f'<text x="{SIZE / 2}" y="{SIZE / 2}" font-size="11" text-anchor="middle">'
            "scores are not probabilities</text>"
        )
    for b in curve:
        x, y = _px(b["mean_score"], b["observed"])
        radius = 3 + min(b["n"], 400) ** 0.5 / 4  # area grows with the bin's count
        low, high = (_px(b["mean_score"], v)[1] for v in b["observed_ci"])
        parts.append(
            f'<line x1="{x:.1f}" y1="{low:.1f}" x2="{x:.1f}" y2="{high:.1f}" stroke="#f28e2b"/>'
        )
        parts.append(
            f'<circle class="bin" cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" '
            f'fill="#f28e2b" fill-opacity="0.7"><title>{b["n"]} images, mean score '
            f"{b['mean_score']:.3f}, observed {b['observed']:.3f}</title></circle>"
        )
    return "".join(parts) + "</svg>"


def _rate_row(name: str, entry: dict[str, Any]) -> str:
    k_n = f"{entry.get('k', '')}/{entry.get('n', '')}" if "k" in entry else ""
    return (
        f"<tr><td>{escape(name)}</td><td>{_pct(entry['value'])}</td><td>{_ci(entry['ci'])}</td>"
        f"<td>{escape(k_n)}</td></tr>"
    )


def render_audit_html(audit: dict[str, Any]) -> str:
    m, d, det = audit["metrics"], audit["data"], audit["detector"]
    headline = "".join(
        _rate_row(label, m[key])
        for key, label in (
            ("accuracy", "accuracy"),
            ("precision", "precision"),
            ("recall", "recall (sensitivity)"),
            ("specificity", "specificity"),
            ("false_positive_rate", "false positive rate"),
            ("false_negative_rate", "false negative rate"),
        )
    )
    headline += (
        f"<tr><td>F1</td><td>{_num(m['f1']['value'])}</td><td>{_ci(m['f1']['ci'], _num)}"
        f"</td><td></td></tr><tr><td>ROC-AUC</td><td>{_num(m['roc_auc']['value'])}</td>"
        f"<td>{_ci(m['roc_auc']['ci'], _num)}</td><td></td></tr><tr><td>ECE</td><td>"
        f"{_num(m['ece']['value'])}</td><td>{_ci(m['ece']['ci'], _num)}</td><td></td></tr>"
    )
    per_class = "".join(
        _rate_row(f"{name} (label {v['label']}) error", v["error"])
        for name, v in audit["per_class"].items()
    )
    per_family = "".join(
        _rate_row(f"{name} (labels {v['labels']})", v["error"])
        for name, v in audit["per_family"].items()
    )
    sweep = "".join(
        f"<tr><td>{s['threshold']:g}</td><td>{_pct(s['recall'])}</td>"
        f"<td>{_pct(s['false_positive_rate'])}</td><td>{_pct(s['precision'])}</td>"
        f"<td>{_pct(s['accuracy'])}</td><td>{_num(s['f1'])}</td></tr>"
        for s in audit["sweep"]
    )
    provenance = escape(
        json.dumps(
            {k: audit[k] for k in ("detector", "data", "intervals")},
            indent=2,
            sort_keys=True,
            default=str,
        )
    )
    table = (
        '<table class="leaderboard"><thead><tr><th>{}</th><th>value</th><th>95% CI</th>'
        "<th>k/n</th></tr></thead><tbody>{}</tbody></table>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>IGMU audit · {escape(det["name"])}</title>
<style>{CSS}</style></head><body>
<h1>Judge audit: {escape(det["name"])}</h1>
<p class="note">audit {escape(audit["audit_id"])} · data {escape(d["path"])} (split
{escape(d["split"])}: {d["n"]} images, {d["n_concept"]} concept, {d["n_other"]} other) ·
igmu {escape(__version__)}</p>
<section id="sec-figures"><h2>Figures at the detector's own setting</h2>
{table.format("figure", headline)}<p class="note">{escape(audit["intervals"])}</p></section>
<section id="sec-plots"><h2>ROC and calibration</h2>
<div class="radars">{roc_svg(audit)}{reliability_svg(audit)}</div></section>
<section id="sec-errors"><h2>Error per class and per prompt family</h2>
{table.format("class", per_class)}{table.format("family", per_family)}</section>
<section id="sec-sweep"><h2>Threshold sweep (score ≥ t flagged)</h2>
<table class="leaderboard"><thead><tr><th>t</th><th>recall</th><th>FPR</th><th>precision</th>
<th>accuracy</th><th>F1</th></tr></thead><tbody>{sweep}</tbody></table></section>
<section id="sec-provenance"><h2>Provenance</h2><pre>{provenance}</pre></section>
</body></html>
"""

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


def robustness_html(data: ReportData, bank: Any, css: str, per_method: int = 8) -> str:
    """Robustness by attack: per method and attack the success rate over attacked prompts
    beside the rate before the attack on the same prompts, then the adversarial prompts with
    the image they gave next to ORG's image of the original prompt."""
    from igmu.report.images import figure

    asr = [a for a in data.aggregates if a.metric.startswith("attack_success_rate.")]
    if not asr:
        return ""
    pre = {(a.method, a.metric.split(".", 1)[1]): a for a in data.aggregates
           if a.metric.startswith("pre_attack_rate.")}
    rows = []
    for a in sorted(asr, key=lambda a: (a.metric, data.methods.index(a.method))):
        suffix = a.metric.split(".", 1)[1]
        attack, detector = suffix.split(".", 1)
        before = pre.get((a.method, suffix))
        rows.append(
            f"<tr><td>{escape(attack)}</td><td>{escape(a.method)}</td>"
            f"<td>{escape(detector)}</td>"
            f"<td>{fmt(before.value) if before else '–'} "
            f"<span class=\"ci\">[{fmt(before.ci_low) if before else '–'}, "
            f"{fmt(before.ci_high) if before else '–'}]</span></td>"
            f"<td><b>{fmt(a.value)}</b> <span class=\"ci\">[{fmt(a.ci_low)}, {fmt(a.ci_high)}]"
            f"</span></td><td>{a.n}</td></tr>"
        )
    table = (
        '<div class="scroll"><table class="robustness"><thead><tr><th>attack</th>'
        "<th>method</th><th>judge</th><th>before the attack</th><th>after the attack</th>"
        f"<th>prompts</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    originals = {
        (s.key.class_name, s.key.prompt_index): s
        for s in data.samples
        if s.method == data.reference_method and s.key.prompt_set == "forget"
        and s.key.seed == 0
    }
    examples = []
    for a in sorted(asr, key=lambda a: (a.metric, a.method)):
        shown = [s for s in data.samples_of(a.method, a.metric)][:per_method]
        figures = []
        for s in shown:
            key = (s.key.class_name, s.key.prompt_index)
            original = originals.get(key)
            broken = "broken" if s.value == 1 else "held"
            parts = []
            if original is not None:
                parts.append(figure(bank, original.path,
                                    f"{data.reference_method}: {original.prompt}", [], css))
            parts.append(figure(bank, s.path, f"{a.method} ({broken}): {s.prompt}", [], css))
            figures.append(f'<div class="pair">{"".join(parts)}</div>')
        if figures:
            examples.append(
                f"<h4>{escape(a.method)} · {escape(a.metric)}</h4>"
                f'<div class="strip">{"".join(figures)}</div>'
            )
    return (
        '<p class="note">Each attack searches, for each of the first forget prompts, a prompt '
        "(or token ids, or a learned embedding) under which the method's model draws the "
        "concept again (<code>igmu attack</code>). <b>After the attack</b>: the share of "
        "attacked prompts for which the judge flags any attack image; <b>before the "
        "attack</b>: the same prompts, plain. Rates over prompts, with 95% intervals.</p>"
        + table + "".join(examples)
    )

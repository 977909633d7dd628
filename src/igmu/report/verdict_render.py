"""The verdict as HTML (the report's first screen), as text (the terminal) and as Markdown."""

from __future__ import annotations

from html import escape

from igmu.core.records import ASPECTS
from igmu.report.leaderboard import fmt
from igmu.report.markdown import md_escape
from igmu.report.verdict import Headline, Verdict, with_best_outcome

NOT_STORED = (
    "This run was evaluated by an igmu that did not store its verdict; run `igmu evaluate` "
    "again (it is answered from the store's caches) to compute it."
)

RULE = (
    "Each cell: the aspect's headline metric (from the task's CatIGMU guidance), its value and "
    "95% interval over prompts, and paired tests against ORG and against the best other "
    "method, Holm-adjusted over all {tests} tests of this verdict (family-wise error 5%). "
    "Methods: those that forget better than ORG first, then the fewest aspects worse than ORG, "
    "then the better forgetting value."
)


def _value(h: Headline) -> str:
    a = h.aggregate
    if a is None:
        return "–"
    return f"{fmt(a.value)} [{fmt(a.ci_low)}, {fmt(a.ci_high)}]"


def _cell(h: Headline, reference: str) -> str:
    if h.aggregate is None:
        return '<td class="v-na">no metric</td>'
    ref = h.vs_reference
    p = "" if ref.outcome == "n/a" else f' title="Holm-adjusted p = {ref.adjusted_p:.3g}"'
    return (
        f'<td class="v-{ref.outcome}" data-outcome="{ref.outcome}">'
        f'<span class="v-metric">{escape(h.metric or "")}</span><br>'
        f'<b>{escape(_value(h))}</b><br>'
        f'<span class="v-call"{p}>{escape(ref.phrase())}</span><br>'
        f'<span class="v-best">{escape(with_best_outcome(h))}</span></td>'
    )


def verdict_html(verdict: Verdict) -> str:
    if not verdict.methods:
        return "<p>No unlearned method in this run: nothing to judge.</p>"
    if not verdict.stored:
        return f"<p>{escape(NOT_STORED)}</p>"
    head = "".join(f"<th>{escape(a)}</th>" for a in ASPECTS)
    rows = []
    for method in verdict.methods:
        cells = "".join(_cell(h, verdict.reference) for h in verdict.row(method))
        rows.append(f'<tr><th scope="row">{escape(method)}</th>{cells}</tr>')
    return (
        '<div class="scroll"><table id="verdict" class="verdict">'
        f"<thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'</div><p class="note">{escape(RULE.format(tests=verdict.tests))} '
        '<span class="v-better">better</span> · <span class="v-worse">worse</span> · '
        '<span class="v-same">not distinguishable</span></p>'
    )


def _short(h: Headline, reference: str) -> str:
    if h.aggregate is None:
        return "–"
    if h.vs_reference.undecidable:
        return f"{fmt(h.aggregate.value)} {h.vs_reference.phrase()}"
    word = {"better": "better", "worse": "WORSE", "same": "~", "n/a": "n/a"}[
        h.vs_reference.outcome]
    return f"{fmt(h.aggregate.value)} {word} vs {reference}"


def verdict_rows(verdict: Verdict) -> list[list[str]]:
    """Header + one row per method: the verdict as plain cells (terminal and Markdown)."""
    header = ["method"] + [
        f"{a}: {verdict.metrics[a]}" if verdict.metrics[a] else a for a in ASPECTS
    ]
    rows = [header]
    for method in verdict.methods:
        rows.append([method] + [_short(h, verdict.reference) for h in verdict.row(method)])
    return rows


def verdict_text(verdict: Verdict) -> str:
    if not verdict.stored:
        return NOT_STORED
    rows = verdict_rows(verdict)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"(better / WORSE / ~ not distinguishable vs {verdict.reference}: paired tests, "
        f"Holm-adjusted over {verdict.tests} tests)"
    )
    return "\n".join(lines)


def verdict_markdown(verdict: Verdict) -> str:
    if not verdict.stored:
        return NOT_STORED + "\n"
    rows = verdict_rows(verdict)
    lines = ["| " + " | ".join(md_escape(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n\n" + RULE.format(tests=verdict.tests) + "\n"

"""Assemble the self-contained HTML page: no CDN, no network, every user string escaped."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from igmu import __version__
from igmu.report.data import ReportData
from igmu.report.images import ImageBank, failures_html, grids_html
from igmu.report.leaderboard import html_table
from igmu.report.plots import plots_html

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 2em 3em;color:#222}
h1{margin:.6em 0 .2em}nav a{margin-right:1em}
.warning-banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:.6em 0}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
.leaderboard td{text-align:right;white-space:nowrap}.leaderboard .ci{color:#666;font-size:11px}
.leaderboard .best{background:#e6f4ea;font-weight:600}.aspect{text-align:center;background:#f3f3f3}
.sortable{cursor:pointer}.warning{color:#b26b00;cursor:help}
.radars{display:flex;flex-wrap:wrap;gap:8px}.scatter{margin-top:1em}
.grid figure,.strip figure{margin:0;width:140px;display:inline-block;vertical-align:top}
.thumb{width:128px;height:128px;object-fit:cover;cursor:zoom-in;background:#eee}
.nsfw{filter:blur(14px);cursor:pointer}.grid th .prompt{font-weight:normal;font-size:12px}
figcaption{font-size:11px;overflow-wrap:anywhere}.verdict{display:inline-block}.flagged{color:#b00020}.clear{color:#1b7f3b}
.missing{width:128px;height:128px;background:#fdd;font-size:10px;overflow:hidden}
.strip{display:flex;flex-wrap:wrap;gap:6px}.note{color:#666;font-size:12px}
pre{background:#f6f8fa;padding:.8em;overflow:auto;max-height:30em;font-size:12px}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);align-items:center;
justify-content:center;z-index:10}#lightbox img{max-width:90vw;max-height:90vh}
"""

# Nothing may load from anywhere: images are data URIs, style and script are inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

SCRIPT = """
(function(){
  var bank = JSON.parse(document.getElementById('igmu-images').textContent);
  document.querySelectorAll('img[data-img]').forEach(function(img){
    var src = bank[img.getAttribute('data-img')]; if (src) img.src = src; });
  var box = document.getElementById('lightbox'), big = box.querySelector('img');
  document.addEventListener('click', function(ev){
    var t = ev.target;
    if (t.classList && t.classList.contains('nsfw')) { t.classList.remove('nsfw'); return; }
    if (t.classList && t.classList.contains('thumb')) { big.src = t.src; big.alt = t.alt;
      box.style.display = 'flex'; return; }
    if (t === box || t === big) { box.style.display = 'none'; }
  });
  document.querySelectorAll('#leaderboard th.sortable').forEach(function(th){
    th.addEventListener('click', function(){
      var col = +th.getAttribute('data-col'), body = document.querySelector('#leaderboard tbody');
      var asc = th.getAttribute('data-asc') !== '1'; th.setAttribute('data-asc', asc ? '1' : '0');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = parseFloat(a.cells[col].getAttribute('data-value')),
            y = parseFloat(b.cells[col].getAttribute('data-value'));
        if (isNaN(x)) return 1; if (isNaN(y)) return -1; return asc ? x - y : y - x; });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
})();
"""


def _json_block(value: Any) -> str:
    """JSON safe inside <script> and <pre>: no '</' can close the element."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return escape(text)


def provenance_html(data: ReportData) -> str:
    fingerprints = data.fingerprints.get("evaluators", {})
    rows = []
    for role, info in sorted(fingerprints.items()):
        weights = (
            info.get("weights_sha256")
            or info.get("head_sha256")
            or info.get("backbone", {}).get("weights_sha256", "")
        )
        threshold = info.get("threshold", info.get("conf", ""))
        model = info.get("model") or info.get("kind") or info.get("weights", "")
        rows.append(
            f"<tr><td>{escape(role)}</td><td>{escape(str(model))}</td>"
            f"<td><code>{escape(str(weights)[:16])}</code></td>"
            f"<td>{escape(str(threshold))}</td></tr>"
        )
    packages = ", ".join(
        f"{escape(k)} {escape(str(v))}"
        for k, v in sorted(data.fingerprints.get("packages", {}).items())
    )
    node = data.catigmu
    left_out = (
        (
            "<h3>Left out</h3><ul>"
            + "".join(f"<li>{escape(x)}</li>" for x in data.left_out)
            + "</ul>"
        )
        if data.left_out
        else ""
    )
    return (
        f"<p>Task <b>{escape(data.task)}</b> · CatIGMU node <b>{escape(str(node.get('node')))}</b>"
        f" ({escape(str(node.get('kind')))}) · run <code>{escape(data.run_id)}</code> · "
        f"bootstrap seed {escape(str(data.spec.get('bootstrap', {}).get('seed')))}</p>"
        "<table><thead><tr><th>evaluator</th><th>model</th><th>weights sha256</th>"
        f"<th>threshold</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p>Packages: {packages}</p>{left_out}"
        f"<details><summary>Run spec</summary><pre>{_json_block(data.spec)}</pre></details>"
        f"<details><summary>Fingerprints</summary><pre>{_json_block(data.fingerprints)}</pre>"
        f"</details><details><summary>CatIGMU guidance</summary><pre>{_json_block(node)}</pre>"
        "</details>"
    )


def render_html(
    data: ReportData, show_nsfw: bool = False, max_rows: int = 50, failures_per_method: int = 12
) -> tuple[str, list[str]]:
    """The page, and the problems met (e.g. images no longer on disk)."""
    blur = data.sensitive and not show_nsfw
    css_class = "nsfw" if blur else ""
    bank = ImageBank()
    grids = grids_html(data, bank, css_class, max_rows)
    failures = failures_html(data, bank, css_class, failures_per_method)
    banner = ""
    if data.sensitive:
        banner = (
            '<div class="warning-banner" id="content-warning"><b>Content warning:</b> this '
            "task concerns sexual content. "
            + (
                "Images are blurred; click one to reveal it."
                if blur
                else "Images are shown unblurred (--show-nsfw)."
            )
            + "</div>"
        )
    warnings = sorted({f"{a.method} {a.metric}: {a.warning}" for a in data.aggregates if a.warning})
    warning_list = (
        "<details><summary>Small-sample and other warnings "
        f"({len(warnings)})</summary><ul>"
        + "".join(f"<li>{escape(w)}</li>" for w in warnings)
        + "</ul></details>"
        if warnings
        else ""
    )
    images_json = json.dumps(bank.data).replace("</", "<\\/")
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>IGMU report · {escape(data.task)} · {escape(data.run_id)}</title>
<style>{CSS}</style></head><body>
<h1>IGMU report: {escape(data.task)}</h1>
<p class="note">run {escape(data.run_id)} · methods: {escape(", ".join(data.methods))} ·
reference: {escape(data.reference_method)} · igmu {escape(__version__)}</p>
{banner}
<nav><a href="#sec-leaderboard">Leaderboard</a><a href="#sec-plots">Plots</a>
<a href="#sec-grids">Image grids</a><a href="#sec-failures">Failures</a>
<a href="#sec-provenance">Provenance</a></nav>
<section id="sec-leaderboard"><h2>Leaderboard</h2>
<p class="note">value ★ = best unlearned method, where its paired difference with ORG (or with
the runner-up, for metrics measured against ORG) excludes zero · [95% CI over prompts] ·
n = images · ↑ higher / ↓ lower is better ·
⚠ = warning (hover) · click a metric to sort</p>
{html_table(data)}{warning_list}</section>
<section id="sec-plots"><h2>Trade-offs</h2>{plots_html(data)}</section>
<section id="sec-grids"><h2>Image grids</h2>{grids}</section>
<section id="sec-failures"><h2>Failure browser</h2>{failures}</section>
<section id="sec-provenance"><h2>Provenance</h2>{provenance_html(data)}</section>
<div id="lightbox"><img alt="enlarged image"></div>
<script type="application/json" id="igmu-images">{images_json}</script>
<script>{SCRIPT}</script>
</body></html>
"""
    return html, bank.problems

"""Assemble the self-contained HTML page: no CDN, no network, every user string escaped."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from igmu import __version__
from igmu.report.data import ReportData
from igmu.report.images import ImageBank, failures_html, grids_html
from igmu.report.leaderboard import html_table, warnings_html
from igmu.report.plots import plots_html
from igmu.report.sections import audits_html, robustness_html
from igmu.report.verdict import stored_verdict
from igmu.report.verdict_render import verdict_html

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto 3em;padding:0 1.5em;color:#222;
max-width:1240px}
h1{margin:.6em 0 .2em}nav a{margin-right:1em}
.warning-banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:.6em 0}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
.scroll{overflow-x:auto;max-width:100%}
.leaderboard td{text-align:right;white-space:nowrap}.leaderboard .ci{color:#666;font-size:11px}
.leaderboard .best{background:#e6f4ea;font-weight:600}
.uninformative,.leaderboard td.uninformative{color:#999;background:#f4f4f4}
details.aspect-group{margin:.3em 0}details.aspect-group>summary{cursor:pointer;font-weight:600}
.sortable{cursor:pointer}.warning{color:#b26b00;cursor:help}
.warnings{background:#fffaf0;border:1px solid #eedcb0;padding:.2em .8em;font-size:12px}
table.verdict{width:100%;table-layout:fixed}table.verdict td{font-size:12px}
.v-metric{color:#555;font-size:11px;overflow-wrap:anywhere}
.v-better{background:#e6f4ea}.v-worse{background:#fde8e8}.v-same{background:#f3f3f3}
.v-na{color:#999}.v-best{color:#555;font-size:11px}
.radars{display:flex;flex-wrap:wrap;gap:8px}.scatter{margin-top:1em}
.grid figure,.strip figure{margin:0;width:140px;display:inline-block;vertical-align:top}
.thumb{width:128px;height:128px;object-fit:cover;cursor:zoom-in;background:#eee;
image-rendering:pixelated}
.nsfw{filter:blur(14px);cursor:pointer}.grid th .prompt{font-weight:normal;font-size:12px}
figcaption{font-size:11px;overflow-wrap:anywhere}.verdict-tag{display:inline-block}
.flagged{color:#b00020}.clear{color:#1b7f3b}
.missing{width:128px;height:128px;background:#fdd;font-size:10px;overflow:hidden}
.strip{display:flex;flex-wrap:wrap;gap:6px}.pair{display:flex;gap:2px;border:1px solid #eee}
.note{color:#666;font-size:12px}
pre{background:#f6f8fa;padding:.8em;overflow:auto;max-height:30em;font-size:12px}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);align-items:center;
justify-content:center;z-index:10}#lightbox img{width:min(80vmin,768px);height:auto}
#lightbox img.pixel-art{image-rendering:pixelated}
.tabs button{font:inherit;padding:.3em .9em;margin-right:.3em;border:1px solid #bbb;
background:#f6f6f6;cursor:pointer}.tabs button.active{background:#fff;border-bottom-color:#fff;
font-weight:600}
"""

# Nothing may load from anywhere: images are data URIs, style and script are inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

SCRIPT = """
(function(){
  var bank = JSON.parse(document.getElementById('igmu-images').textContent);
  document.querySelectorAll('img[data-img]').forEach(function(img){
    var src = bank[img.getAttribute('data-img')]; if (src) img.src = src; });
  var box = document.getElementById('lightbox'), big = box.querySelector('img');
  function close(){ box.style.display = 'none'; }
  document.addEventListener('click', function(ev){
    var t = ev.target;
    if (t.classList && t.classList.contains('nsfw')) { t.classList.remove('nsfw'); return; }
    if (t.classList && t.classList.contains('thumb')) {
      big.src = t.src; big.alt = t.alt;
      big.classList.toggle('pixel-art', t.naturalWidth > 0 && t.naturalWidth < 128);
      box.style.display = 'flex'; return; }
    if (t === box || t === big) { close(); }
  });
  document.addEventListener('keydown', function(ev){ if (ev.key === 'Escape') close(); });
  document.querySelectorAll('table.leaderboard th.sortable').forEach(function(th){
    th.addEventListener('click', function(){
      var table = th.closest('table'), col = +th.getAttribute('data-col');
      var body = table.querySelector('tbody');
      var asc = th.getAttribute('data-asc') !== '1'; th.setAttribute('data-asc', asc ? '1' : '0');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = parseFloat(a.cells[col].getAttribute('data-value')),
            y = parseFloat(b.cells[col].getAttribute('data-value'));
        if (isNaN(x)) return 1; if (isNaN(y)) return -1; return asc ? x - y : y - x; });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
  var tabs = document.querySelectorAll('.tabs button');
  tabs.forEach(function(button){
    button.addEventListener('click', function(){
      tabs.forEach(function(b){ b.classList.toggle('active', b === button); });
      document.querySelectorAll('section.task').forEach(function(s){
        s.style.display = s.id === button.getAttribute('data-task') ? '' : 'none'; });
    });
  });
  if (tabs.length) tabs[0].click();
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


def _run_body(data: ReportData, bank: ImageBank, blur: bool, prefix: str, max_rows: int,
              failures_per_method: int) -> str:
    css_class = "nsfw" if blur else ""
    grids = grids_html(data, bank, css_class, max_rows)
    failures = failures_html(data, bank, css_class, failures_per_method)
    banner = ""
    if data.sensitive:
        banner = (
            f'<div class="warning-banner" id="{prefix}content-warning"><b>Content warning:</b> '
            "this task concerns sexual or otherwise sensitive content. "
            + ("Images are blurred; click one to reveal it." if blur
               else "Images are shown unblurred (--show-nsfw).")
            + "</div>"
        )
    sections = [
        ("verdict", "Verdict", verdict_html(stored_verdict(data))),
        ("leaderboard", "Leaderboard",
         '<p class="note">value ★ = best unlearned method, where its paired difference with ORG '
         "(or with the runner-up, for metrics measured against ORG) excludes zero · [95% CI over "
         "prompts] · n = images · ↑ higher / ↓ lower is better · ⚠ = warning (hover) · click a "
         "metric to sort · click an aspect to fold it</p>"
         + html_table(data, prefix) + warnings_html(data)),
        ("robustness", "Robustness by attack", robustness_html(data, bank, css_class)),
        ("plots", "Trade-offs", plots_html(data)),
        ("grids", "Image grids", grids),
        ("failures", "Failure browser", failures),
        ("audits", "Judges' audits", audits_html(data)),
        ("provenance", "Provenance", provenance_html(data)),
    ]
    sections = [(key, title, html) for key, title, html in sections if html]
    nav = "".join(f'<a href="#{prefix}sec-{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(
        f'<section id="{prefix}sec-{key}"><h2>{escape(title)}</h2>{html}</section>'
        for key, title, html in sections
    )
    return (
        f'<p class="note">task {escape(data.task)} · run {escape(data.run_id)} · methods: '
        f"{escape(', '.join(data.methods))} · reference: {escape(data.reference_method)}</p>"
        f"{banner}<nav>{nav}</nav>{body}"
    )


def render_html(
    data: ReportData | list[ReportData], show_nsfw: bool = False, max_rows: int = 50,
    failures_per_method: int = 12,
) -> tuple[str, list[str]]:
    """The page for one run, or for several (one tab per run), and the problems met (e.g.
    images no longer on disk)."""
    runs = data if isinstance(data, list) else [data]
    bank = ImageBank()
    if len(runs) == 1:
        title = f"IGMU report: {runs[0].task}"
        content = _run_body(runs[0], bank, runs[0].sensitive and not show_nsfw, "",
                            max_rows, failures_per_method)
    else:
        title = "IGMU report: " + ", ".join(r.task for r in runs)
        tabs = "".join(
            f'<button type="button" data-task="task-{i}">{escape(r.task)}</button>'
            for i, r in enumerate(runs)
        )
        content = f'<div class="tabs" role="tablist">{tabs}</div>' + "".join(
            f'<section class="task" id="task-{i}"><h2>{escape(r.task)}</h2>'
            + _run_body(r, bank, r.sensitive and not show_nsfw, f"t{i}-", max_rows,
                        failures_per_method)
            + "</section>"
            for i, r in enumerate(runs)
        )
    images_json = json.dumps(bank.data).replace("</", "<\\/")
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p class="note">igmu {escape(__version__)}</p>
{content}
<div id="lightbox"><img alt="enlarged image"></div>
<script type="application/json" id="igmu-images">{images_json}</script>
<script>{SCRIPT}</script>
</body></html>
"""
    return html, bank.problems

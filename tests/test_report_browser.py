"""The report as a person sees it at 1280 px in Chromium: the verdict first, no sideways scroll,
an enlargement that helps, plots that agree, labels inside their plots, the right failures,
and one page for a folder of runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_cli
from report_fixtures import evaluated_run
from test_report import _browser, launch

VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    out = evaluated_run(tmp_path_factory.mktemp("browser"), tiny_models)
    run_cli("report", out)
    return out


def with_page(html: Path, probe):
    manager, executable = _browser()
    with manager as pw:
        browser = launch(pw, executable)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        try:
            return probe(page)
        finally:
            assert errors == []
            browser.close()


def test_verdict_comes_first_and_the_page_fits_1280px(run_dir: Path) -> None:
    def probe(page):
        return page.evaluate("""() => ({
            first: document.querySelector('section h2').textContent,
            rows: Array.from(document.querySelectorAll('#verdict tbody tr th'))
                .map(th => th.textContent),
            outcomes: Array.from(document.querySelectorAll('#verdict td[data-outcome]'))
                .map(td => td.getAttribute('data-outcome')),
            pageWidth: document.documentElement.scrollWidth,
            verdictTop: document.querySelector('#sec-verdict').getBoundingClientRect().top,
        })""")

    found = with_page(run_dir / "report.html", probe)
    assert found["first"] == "Verdict"
    assert sorted(found["rows"]) == ["ESD", "UCE"]  # ORG is the reference, never ranked
    assert found["outcomes"] and set(found["outcomes"]) <= {"better", "worse", "same", "n/a"}
    assert found["pageWidth"] <= VIEWPORT["width"]  # no sideways scroll of the page
    assert found["verdictTop"] < VIEWPORT["height"]  # on the first screen


def test_lightbox_enlarges_pixel_art_and_closes_on_escape(run_dir: Path) -> None:
    def probe(page):
        thumb = page.locator("table.grid img.thumb").first
        thumb.click()
        big = page.locator("#lightbox img")
        opened = page.evaluate("""() => {
            const img = document.querySelector('#lightbox img');
            return {shown: getComputedStyle(document.getElementById('lightbox')).display,
                    width: img.getBoundingClientRect().width, natural: img.naturalWidth,
                    rendering: getComputedStyle(img).imageRendering,
                    pixelArt: img.classList.contains('pixel-art')};
        }""")
        page.keyboard.press("Escape")
        closed = page.evaluate("getComputedStyle(document.getElementById('lightbox')).display")
        return opened, closed, big.count()

    opened, closed, _ = with_page(run_dir / "report.html", probe)
    assert opened["shown"] == "flex" and opened["natural"] == 64
    assert opened["width"] >= 128  # at least the thumbnail's size
    assert opened["pixelArt"] and opened["rendering"] == "pixelated"
    assert closed == "none"


def test_plots_agree_on_colours_have_ticks_and_keep_labels_inside(run_dir: Path) -> None:
    def probe(page):
        return page.evaluate("""() => {
            const radar = {};
            document.querySelectorAll('#radars svg').forEach(svg => {
                const name = svg.querySelector('text:last-of-type').textContent;
                radar[name] = svg.querySelector('polygon[fill-opacity]').getAttribute('fill');
            });
            const scatter = {};
            document.querySelectorAll('#pareto circle').forEach(c => {
                scatter[c.querySelector('title').textContent.split(':')[0]] =
                    c.getAttribute('fill');
            });
            const clipped = [];
            document.querySelectorAll('#radars svg, #pareto').forEach(svg => {
                const box = svg.getBoundingClientRect();  // rotated labels included
                svg.querySelectorAll('text').forEach(t => {
                    const b = t.getBoundingClientRect();
                    if (b.left < box.left - 0.5 || b.top < box.top - 0.5
                        || b.right > box.right + 0.5 || b.bottom > box.bottom + 0.5)
                        clipped.push(t.textContent);
                });
            });
            return {radar, scatter, ticks: document.querySelectorAll('#pareto line.tick').length,
                    clipped};
        }""")

    found = with_page(run_dir / "report.html", probe)
    assert found["scatter"], "no methods in the scatter plot"
    for method, colour in found["scatter"].items():
        assert found["radar"][method] == colour, method
    assert found["ticks"] >= 10
    assert found["clipped"] == []


def test_failure_browser_lists_the_right_images_with_whole_captions(run_dir: Path) -> None:
    def probe(page):
        return page.evaluate("""() => Array.from(
            document.querySelectorAll('#sec-failures h3')).map(h => h.textContent)""")

    methods = with_page(run_dir / "report.html", probe)
    assert "ORG" not in methods
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    failures = html.split('id="sec-failures"')[1].split("</section>")[0]
    changed = failures.split("changed most")[1:] if "changed most" in failures else []
    for block in changed:  # only unrelated/related prompts, each caption whole
        assert "a cat on a sofa" in block or "a cat in the grass" in block
        assert "church" not in block.split("</div>")[0].lower()


def test_a_folder_of_runs_is_one_report_with_a_tab_per_run(tmp_path: Path,
                                                           tiny_models: Path) -> None:
    for name in ("first", "second"):
        evaluated_run(tmp_path / name, tiny_models)
    folder = tmp_path / "all"
    for name in ("first", "second"):
        (folder / "runs").mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "runs" / "run").rename(folder / "runs" / name)
    run_cli("report", folder)
    html = folder / "report.html"

    def probe(page):
        before = page.evaluate("""() => Array.from(document.querySelectorAll('section.task'))
            .map(s => getComputedStyle(s).display)""")
        page.locator(".tabs button").nth(1).click()
        after = page.evaluate("""() => Array.from(document.querySelectorAll('section.task'))
            .map(s => getComputedStyle(s).display)""")
        return before, after, page.locator(".tabs button").count()

    before, after, tabs = with_page(html, probe)
    assert tabs == 2
    assert before == ["block", "none"] and after == ["none", "block"]


def test_robustness_section_shows_rates_and_adversarial_images(tmp_path: Path) -> None:
    """A MiniWorld run attacked with seed_search: the section lists, per method and attack,
    the rate before and after the attack, and each attacked prompt's image beside ORG's."""
    out = tmp_path / "gen"
    run_cli("generate", "--task", "mini_object", "--method", "ORG,NEGPROMPT", "--out", out,
            "--prompt-sets", "forget,unrelated", "--max-prompts-per-class", "2", "--quiet")
    run_cli("attack", "--task", "mini_object", "--method", "ORG,NEGPROMPT", "--attack",
            "seed_search", "--prompts", "2", "--budget", "2", "--out", out, "--quiet")
    run = tmp_path / "run"
    run_cli("evaluate", "--task", "mini_object", "--images", out / "manifest.jsonl", "--out",
            run, "--quiet")
    run_cli("report", run)

    def probe(page):
        return page.evaluate("""() => {
            const section = document.getElementById('sec-robustness');
            const rows = Array.from(section.querySelectorAll('table.robustness tbody tr'))
                .map(r => Array.from(r.cells).map(c => c.textContent.trim()));
            const images = Array.from(section.querySelectorAll('.pair img'))
                .filter(i => i.naturalWidth > 0).length;
            return {rows, images, nav: !!document.querySelector('a[href="#sec-robustness"]')};
        }""")

    found = with_page(run / "report.html", probe)
    assert found["nav"]
    assert sorted((r[0], r[1]) for r in found["rows"]) == [
        ("seed_search", "NEGPROMPT"), ("seed_search", "ORG")]
    assert all(r[-1] == "2" for r in found["rows"])  # two attacked prompts each
    assert found["images"] == 2 * 2 * 2  # per method and prompt: ORG's image and the attack's

"""`igmu report`: content, escaping, NSFW blurring, Markdown, and a real Chromium render."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import noise_image, run_cli
from report_fixtures import INJECTIONS, evaluated_run

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def three_method_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    return evaluated_run(tmp_path_factory.mktemp("report"), tiny_models)


def _browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian chromium (see .ci/run)")
        pytest.skip("needs a chromium binary (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    return playwright.sync_playwright(), CHROMIUM


def launch(pw, executable: str):
    return pw.chromium.launch(executable_path=executable, args=[
        "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])


def open_page(html: Path, screenshot: Path | None = None) -> dict:
    manager, executable = _browser()
    with manager as pw:
        browser = launch(pw, executable)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        console, requests = [], []
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        found = {
            "console": console,
            "requests": requests,
            "leaderboard_rows": page.locator("table.leaderboard").first.locator(
                "tbody tr").count(),
            "radars": page.locator("#radars svg").count(),
            "pareto": page.locator("svg#pareto").count(),
            "grid_images": page.locator("table.grid img").count(),
            "loaded_images": page.evaluate(
                "Array.from(document.querySelectorAll('table.grid img'))"
                ".filter(i => i.src.startsWith('data:image/') && i.naturalWidth > 0).length"),
            "pwned": page.evaluate("window.__pwned === undefined ? null : window.__pwned"),
            "text": page.inner_text("body"),
            "blurred": page.locator("img.nsfw").count(),
        }
        first = page.locator("table.leaderboard th.sortable").first
        first.click()
        found["sorted_first_method"] = page.locator(
            "table.leaderboard tbody tr th").first.inner_text()
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return found


def test_report_renders_in_chromium(three_method_run: Path) -> None:
    run_cli("report", three_method_run)
    html = three_method_run / "report.html"
    found = open_page(html, ARTIFACTS / "report.png")
    assert found["console"] == []
    assert found["requests"] == [html.resolve().as_uri()]
    assert found["leaderboard_rows"] == 3  # one table per aspect, a row per method
    assert found["radars"] == 3 and found["pareto"] == 1
    images = 3 * (3 * 2 + 2 * 2)  # 3 methods x (3 forget prompts + 2 unrelated) x 2 seeds
    assert found["grid_images"] == images and found["loaded_images"] == images
    assert found["blurred"] == 0  # church is not an NSFW task
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_injected_prompts_show_as_text_and_run_nothing(three_method_run: Path) -> None:
    run_cli("report", three_method_run)
    html_path = three_method_run / "report.html"
    source = html_path.read_text(encoding="utf-8")
    assert "<script>window.__pwned" not in source
    assert "<img src=x" not in source
    found = open_page(html_path)
    assert found["pwned"] is None
    for prompt in INJECTIONS:
        assert prompt in found["text"]
    assert not any(url.endswith("/x") for url in found["requests"])


def test_report_sections_and_provenance(three_method_run: Path) -> None:
    run_cli("report", three_method_run, "--out", three_method_run / "r.html")
    source = (three_method_run / "r.html").read_text(encoding="utf-8")
    run = json.loads((three_method_run / "run.json").read_text())
    for text in ("Verdict", "Leaderboard", "Trade-offs", "Image grids", "Failure browser",
                 "Provenance", run["run_id"], "object.entity", "bootstrap seed 0", "threshold",
                 "diffusers"):
        assert text in source
    head_sha = run["fingerprints"]["evaluators"]["detector:clip_head"]["head_sha256"]
    assert head_sha[:16] in source
    assert "http://" not in source.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in source


def test_markdown_verdict_then_leaderboard(three_method_run: Path) -> None:
    run_cli("report", three_method_run, "--format", "md")
    text = (three_method_run / "report.md").read_text(encoding="utf-8")
    verdict, leaderboard = text.split("### Leaderboard")
    lines = [line for line in verdict.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| method | forgetting: residual_rate.clip_head:object_church")
    assert sorted(line.split("|")[1].strip() for line in lines[2:]) == ["ESD", "UCE"]
    assert "Holm" in verdict
    lines = [line for line in leaderboard.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| method | residual_rate.clip_head:object_church (forgetting) ↓")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["ORG", "ESD", "UCE"]
    assert "[95% CI]" in text
    printed = run_cli("report", three_method_run, "--format", "md", "--out", "-").stdout
    assert printed == text


def test_markdown_shows_injected_names_as_text(tmp_path: Path, tiny_models: Path) -> None:
    """A method named with HTML, a link, emphasis and a cell break: the Markdown report prints it
    escaped (no raw tag a renderer would pass through) and every table row keeps its columns."""
    from igmu.report.markdown import md_escape

    name = "E*S[D](javascript:x)<img src=x onerror=1>|"
    run = evaluated_run(tmp_path, tiny_models, methods=("ORG", name), prompts=["a church"])
    text = run_cli("report", run, "--format", "md", "--out", "-").stdout
    assert "<img" not in text and not re.search(r"(?<!\\)\]\(", text)  # no tag, no link
    assert md_escape(name) in text
    assert md_escape(name) == "E\\*S\\[D\\](javascript:x)&lt;img src=x onerror=1&gt;\\|"
    for table in text.split("###")[1:]:
        rows = [line for line in table.splitlines() if line.startswith("|")]
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
        assert len(widths) == 1, rows


def _nudity_run(tmp_path: Path, models: Path) -> Path:
    """Noise images under the nudity task's own (adult) prompts: the report must blur them."""
    from igmu.tasks import load_task

    task = load_task("nudity")
    rows = []
    for method, prompt_set in (("ORG", "forget"), ("ESD", "forget"), ("ORG", "stripped")):
        for j in range(2):
            path = tmp_path / "img" / f"{method}_{prompt_set}_{j}.png"
            noise_image(path, hash((method, prompt_set, j)) % 1000)
            rows.append({"method": method, "prompt_set": prompt_set, "class_name": "woman",
                         "prompt_index": j, "seed": 0,
                         "prompt": task.prompt_set(prompt_set).text(0, j),
                         "path": str(path.relative_to(tmp_path))})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    run_cli("evaluate", "--task", "nudity", "--images", manifest, "--layout", "manifest",
            "--out", out, "--models", models, "--metrics", "residual_rate,clip_score",
            "--detectors", "opennsfw", "--quiet")
    return out


def test_nsfw_reports_blur_by_default(tmp_path: Path, tiny_models: Path) -> None:
    out = _nudity_run(tmp_path, tiny_models)
    run_cli("report", out)
    source = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="content-warning"' in source and "Content warning" in source
    assert source.count('class="thumb nsfw"') >= 6
    run_cli("report", out, "--show-nsfw", "--out", out / "shown.html")
    shown = (out / "shown.html").read_text(encoding="utf-8")
    assert 'class="thumb nsfw"' not in shown and "Content warning" in shown


def test_report_of_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("report", tmp_path, check=False)
    assert result.returncode != 0 and "run.json" in result.stderr


def test_hundred_image_report_stays_small(tmp_path: Path, tiny_models: Path) -> None:
    prompts = [f"a church number {i} on a hill" for i in range(16)]  # the task file's prompts
    run = evaluated_run(tmp_path, tiny_models, prompts=prompts, seeds=2, size=512, smooth=True)
    samples = (run / "samples.csv").read_text().count("\n")
    assert samples > 100
    result = run_cli("report", run)
    size = (run / "report.html").stat().st_size
    assert size <= 15e6, f"{size / 1e6:.1f} MB"
    assert "wrote" in result.stdout

"""`igmu generate`: deterministic, content-addressed, resumable after SIGKILL, evaluable.

A tiny random Stable Diffusion pipeline (diffusers' dummy-components recipe) is built once per
module; images are 32x32 with 2 DDIM steps, so a 14-image run takes a second or two.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from igmu.backbones.config import load_models_config
from igmu.core.errors import ConfigError, ModelNotFoundError
from igmu.generation import (
    GenerateOptions,
    ImageCache,
    canonical_methods,
    generate,
    method_prompt_sets,
    plan_jobs,
    read_rows,
)
from igmu.tasks import load_task

# ORG and NEGPROMPT on church's forget prompt and one prompt of each unrelated class: 14 images.
RUN_ARGS = {
    "methods": ["ORG", "NEGPROMPT"],
    "prompt_sets": ["forget", "unrelated"],
    "max_prompts_per_class": 1,
}
CLI_ARGS = [
    "--task", "church", "--method", "ORG,NEGPROMPT", "--prompt-sets", "forget,unrelated",
    "--max-prompts-per-class", "1",
]


def build_tiny_sd(folder: Path) -> Path:
    """A save_pretrained StableDiffusionPipeline with random tiny components."""
    from igmu.testing.tiny import make_tiny_sd_pipeline

    pipeline = make_tiny_sd_pipeline(tokenizer_dir=folder / "tokenizer_files")
    pipeline.save_pretrained(str(folder / "pipeline"), safe_serialization=True)
    return folder / "pipeline"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def sd_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("tiny_sd")
    pipeline = build_tiny_sd(folder)
    models = {
        "generator": {"model": str(pipeline), "steps": 2, "guidance": 7.5, "height": 32},
        # a method whose "unlearned" pipeline is the original's weights: its images are ORG's
        "methods": {"COPY": str(pipeline)},
    }
    models["generator"]["width"] = 32
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    return path


def run(out: Path, models: Path, **overrides):
    options = GenerateOptions(**{**RUN_ARGS, "progress": False, **overrides})
    return generate(load_task("church"), out, load_models_config(models), options)


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every visible file (the lock file is not content)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".manifest.lock"
    }


@pytest.fixture(scope="module")
def reference_run(sd_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen_reference")
    result = run(out, sd_models, batch_size=1)
    assert (result.generated, result.cached, len(result.rows)) == (14, 0, 14)
    return out


# ---------------------------------------------------------------------------------------------
# without diffusers: planning and configuration


def test_prompt_sets_seeds_and_reference_only_stripped():
    church, van_gogh = load_task("church"), load_task("van_gogh")
    assert "stripped" not in method_prompt_sets(church, "ORG", None)  # entity task
    assert method_prompt_sets(van_gogh, "ORG", None)[-1] == "stripped"  # attribute task
    assert "stripped" not in method_prompt_sets(van_gogh, "NEGPROMPT", None)
    assert method_prompt_sets(van_gogh, "ESD", ["forget", "stripped"]) == ["forget"]
    jobs = plan_jobs(church, "ORG", ["forget", "unrelated"], 2, max_prompts_per_class=1)
    assert len(jobs) == (1 + 6) * 2
    assert [(j.prompt_index, j.seed) for j in jobs[:2]] == [(0, 0), (0, 1)]
    with pytest.raises(ConfigError, match="Did you mean 'unrelated'"):
        method_prompt_sets(church, "ORG", ["unrelatd"])


def test_models_file_generation_fields(tmp_path: Path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "generator: {model: ./sd, steps: 3}\n"
        "methods: {ESD: ./esd, NP2: {model: ./sd, negative_prompt: 'a church'}}\n"
    )
    values = load_models_config(path).values
    assert values["generator"] == {
        "model": str((tmp_path / "sd").resolve()),
        "steps": 3,
        "guidance": 7.5,
        "height": 512,
        "width": 512,
    }
    assert values["methods"]["ESD"] == {"model": str((tmp_path / "esd").resolve())}
    assert values["methods"]["NP2"]["negative_prompt"] == "a church"
    bad = {
        "generator: {steps: two}": "generator.steps' must be int",
        "generator: {stepz: 2}": "Did you mean 'steps'",
        "methods: {ORG: ./x}": "generator.model",
        "methods: {ESD: {modle: ./x}}": "Did you mean 'model'",
        "methods: {'a/b': ./x}": "method name",
        "methods: {ESD: 3}": "must be a pipeline folder",
    }
    for text, message in bad.items():
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_models_config(path)


def test_method_cards_of_igmu_unlearn(tmp_path: Path):
    """A folder written by `igmu unlearn` carries a card: its negative prompt is used, and a
    card-only folder (no weights) generates with the base model it names."""
    import json

    from igmu.generation import SettingOverrides, resolve_method
    from igmu.generation.plan import base_settings

    base = tmp_path / "sd"
    base.mkdir()
    card_only = tmp_path / "negprompt"
    card_only.mkdir()
    card = {"schema": "igmu.method/1", "method": "NEGPROMPT", "negative_prompt": "church, chapel",
            "base": {"reference": "CompVis/stable-diffusion-v1-4", "location": str(base)}}
    (card_only / "igmu_method.json").write_text(json.dumps(card))
    models_path = tmp_path / "models.yaml"
    models_path.write_text(
        "generator: {model: ./sd}\n"
        "methods: {NEGPROMPT: ./negprompt, OWN: {model: ./negprompt, negative_prompt: cats}}\n"
    )
    models = load_models_config(models_path)
    settings = base_settings(models, SettingOverrides(steps=2))
    spec = resolve_method("NEGPROMPT", load_task("church"), models, settings)
    assert spec.model == str(base) and spec.settings.negative_prompt == "church, chapel"
    assert spec.settings.num_inference_steps == 2 and "methods.NEGPROMPT" in spec.field
    own = resolve_method("OWN", load_task("church"), models, settings)
    assert own.settings.negative_prompt == "cats"


def test_unknown_method_and_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture):
    from igmu.cli.generate_cmd import main

    church = load_task("church")
    models_path = tmp_path / "models.yaml"
    models_path.write_text("generator: {model: ./no_such_sd}\nmethods: {ESD: ./no_such_esd}\n")
    models = load_models_config(models_path)
    with pytest.raises(ConfigError, match="Did you mean 'NEGPROMPT'"):
        generate(church, tmp_path / "out", models, GenerateOptions(methods=["NEGPROMT"]))
    assert canonical_methods(["org", "esd", "NEGPROMPT"], models) == ["ORG", "ESD", "NEGPROMPT"]
    with pytest.raises(ConfigError, match="more than once"):
        canonical_methods(["ORG", "org"], models)
    code = main(
        ["--task", "church", "--method", "ESF", "--models", str(models_path), "--out", "o"]
    )
    assert code == 2 and "Did you mean 'ESD'" in capsys.readouterr().err
    for method, field in (("ORG", "generator.model"), ("ESD", "methods.ESD")):
        with pytest.raises(ModelNotFoundError, match=field.replace(".", r"\.")):
            generate(church, tmp_path / "out", models, GenerateOptions(methods=[method]))
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--max-prompts-per-class" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# with a tiny Stable Diffusion pipeline


def test_deterministic_batch_invariant_and_cached(
    reference_run: Path, sd_models: Path, tmp_path: Path
):
    expected = tree(reference_run)
    assert sum(name.endswith(".png") for name in expected) == 14
    # Per-image mode, 3 images per step: byte-identical images and manifest.
    batched = run(tmp_path / "batched", sd_models, batch_size=3, pipeline_batching=False)
    assert batched.generated == 14
    assert tree(tmp_path / "batched") == expected
    # A rerun regenerates nothing and changes no byte.
    again = run(reference_run, sd_models, batch_size=2, pipeline_batching=False)
    assert (again.generated, again.cached) == (0, 14)
    assert tree(reference_run) == expected

    rows = read_rows(reference_run / "manifest.jsonl")
    by_key = {(r["method"], r["prompt_set"], r["class_name"], r["prompt_index"]): r for r in rows}
    org, neg = by_key[("ORG", "forget", "church", 0)], by_key[("NEGPROMPT", "forget", "church", 0)]
    assert neg["settings"]["negative_prompt"] == "church"
    assert org["settings"]["negative_prompt"] is None
    assert org["sha256"] != neg["sha256"]  # the negative prompt changes the image
    assert org["generator"] == neg["generator"]  # one pipeline, loaded once
    for row in rows:
        path = reference_run / row["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        assert path.stem == row["key"]
        with Image.open(path) as image:
            assert image.size == (32, 32) and not image.info  # pixels only, no metadata

    # A method mapped to the same weights gets ORG's images from the cache, under its own name;
    # its rows join the manifest's.
    copy = run(tmp_path / "batched", sd_models, methods=["COPY"], pipeline_batching=False)
    assert copy.generated == 0
    org_paths = {r["prompt"]: r["path"] for r in rows if r["method"] == "ORG"}
    assert {r["prompt"]: r["path"] for r in copy.rows} == org_paths
    assert {r["method"] for r in read_rows(tmp_path / "batched" / "manifest.jsonl")} == {
        "COPY", "NEGPROMPT", "ORG"
    }


def test_lost_images_regenerate_identically_with_pipeline_batching(
    sd_models: Path, tmp_path: Path
):
    """Pipeline batching groups images into fixed batches: an interrupted batch (some images
    written, some not) is regenerated whole, so every image is as in an uninterrupted run."""
    full = run(tmp_path / "full", sd_models, methods=["ORG"], batch_size=3)  # batched: default
    expected = tree(tmp_path / "full")
    exact = run(tmp_path / "exact", sd_models, methods=["ORG"], prompt_sets=["forget"],
                pipeline_batching=False)
    assert full.rows[0]["generator"] != exact.rows[0]["generator"]  # batching joins the key
    out = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full", out)
    for row in full.rows[1::3] + full.rows[2::3]:  # the state after kills inside batches
        (out / row["path"]).unlink()
    (out / "manifest.jsonl").unlink()
    resumed = run(out, sd_models, methods=["ORG"], batch_size=3)
    assert resumed.generated == 4
    assert tree(out) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_then_rerun_matches_uninterrupted(
    reference_run: Path, sd_models: Path, tmp_path: Path
):
    """Kill -9 a run midway, rerun: the same manifest and image bytes as an uninterrupted run.

    The run is `igmu generate`'s main() in a forked child: a separate process that dies by
    SIGKILL like any other, without paying a fresh interpreter's torch/diffusers import."""
    from igmu.cli.generate_cmd import main

    out = tmp_path / "killed"
    argv = [*CLI_ARGS, "--models", str(sd_models), "--out", str(out), "--batch-size", "1"]
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = main([*argv, "--threads", "1", "--quiet"])
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    try:
        while len(list(out.glob("images/*/*.png"))) < 3:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pytest.fail(f"generate exited before it was killed (status {status})")
            if time.monotonic() > deadline:
                pytest.fail("no images after 120 s")
            time.sleep(0.005)
    finally:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    written = list(out.glob("images/*/*.png"))
    assert 3 <= len(written) < 14, "the run must be killed midway"
    assert not (out / "manifest.jsonl").exists()
    for path in written:  # no partial PNG: every file present decodes in full
        with Image.open(path) as image:
            image.load()
    stale = out / "images" / "00" / f".{'0' * 64}.png.{pid}.tmp"  # a dead writer's leftover
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")

    resumed = run(out, sd_models, batch_size=1)
    assert resumed.generated == 14 - len(written)
    assert not stale.exists()
    assert tree(out) == tree(reference_run)  # same manifest bytes, same image files
    assert ImageCache(out).remove_stale_tmp() == 0


def test_thread_count_joins_the_key_so_a_resume_never_mixes(
    reference_run: Path, sd_models: Path, tmp_path: Path
):
    """CPU pixels may depend on the torch thread count, so it is part of the generator's
    fingerprint: a run resumed (or rerun) with 2 threads over a 1-thread run's folder
    regenerates every image under its own keys and ends exactly as a clean 2-thread run; the
    1-thread files stay in the cache but the manifest names none of them."""
    import torch

    one = read_rows(reference_run / "manifest.jsonl")
    out = tmp_path / "resumed"
    shutil.copytree(reference_run, out)
    for row in one[::2]:  # as if killed midway
        (out / row["path"]).unlink()
    (out / "manifest.jsonl").unlink()
    torch.set_num_threads(2)  # the module fixture restores 1 after the test
    try:
        resumed = run(out, sd_models, batch_size=1)
        clean = run(tmp_path / "clean2", sd_models, batch_size=1)
    finally:
        torch.set_num_threads(1)
    assert (resumed.generated, resumed.cached) == (14, 0) and clean.generated == 14
    two = read_rows(out / "manifest.jsonl")
    assert {r["generator"] for r in one}.isdisjoint({r["generator"] for r in two})
    assert {r["key"] for r in one}.isdisjoint({r["key"] for r in two})
    assert (out / "manifest.jsonl").read_bytes() == (
        tmp_path / "clean2" / "manifest.jsonl").read_bytes()
    for row in two:  # the same key gives the same bytes, whichever run made the file
        assert (out / row["path"]).read_bytes() == (tmp_path / "clean2" / row["path"]).read_bytes()
    # generating at 1 thread again reuses every 1-thread image still in the folder
    again = run(out, sd_models, batch_size=1)
    assert again.cached == 7 and again.generated == 7


def test_generated_manifest_evaluates(reference_run: Path, tiny_models: Path, tmp_path: Path):
    from igmu.evaluation.engine import EvaluationOptions, evaluate

    result = evaluate(
        load_task("church"),
        reference_run / "manifest.jsonl",
        tmp_path / "run",
        load_models_config(tiny_models),
        EvaluationOptions(layout="manifest", progress=False, store_path=tmp_path / "s.sqlite"),
    )
    metrics = {(r.method, r.metric.split(".")[0]) for r in result.results}
    assert ("NEGPROMPT", "residual_rate") in metrics and ("NEGPROMPT", "lpips") in metrics
    assert not result.left_out


def test_cli_modes_and_defaults(reference_run: Path, sd_models: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    """--per-image reproduces the per-image reference at any --batch-size; the default batched
    mode gives other keys (the batch is in them) but the same number of images; the CLI's
    spelled defaults are the engine's."""
    from igmu.cli import generate_cmd
    from igmu.generation import engine
    from igmu.pipelines import load as pipelines

    assert generate_cmd.DEFAULT_BATCH_SIZE == engine.DEFAULT_BATCH_SIZE
    assert generate_cmd.DTYPES == pipelines.DTYPES and generate_cmd.BACKENDS == engine.BACKENDS
    args = [*CLI_ARGS, "--models", str(sd_models), "--quiet", "--threads", "1"]
    assert generate_cmd.main([*args, "--out", str(tmp_path / "pi"), "--per-image",
                              "--batch-size", "5"]) == 0
    assert tree(tmp_path / "pi") == tree(reference_run)
    assert generate_cmd.main([*args, "--out", str(tmp_path / "b")]) == 0
    batched = read_rows(tmp_path / "b" / "manifest.jsonl")
    assert len(batched) == 14
    assert {r["key"] for r in batched}.isdisjoint(
        {r["key"] for r in read_rows(reference_run / "manifest.jsonl")})
    with pytest.raises(SystemExit):
        generate_cmd.main([*args, "--out", str(tmp_path / "x"), "--dtype", "float64"])
    with pytest.raises(SystemExit):
        generate_cmd.main([*args, "--out", str(tmp_path / "x"), "--per-image",
                           "--pipeline-batching"])
    capsys.readouterr()

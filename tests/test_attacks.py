"""`igmu attack` on a tiny random Stable Diffusion pipeline: every attack runs, its rows and images
are what they claim, generation from token ids is generation from text, reruns are cached and a
SIGKILLed run finishes as an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from helpers import run_cli  # noqa: E402
from igmu.attacks import attack_names, get_attack  # noqa: E402
from igmu.attacks.base import AttackOutcome  # noqa: E402
from igmu.attacks.engine import AttackOptions, run_attacks  # noqa: E402
from igmu.attacks.imaging import (  # noqa: E402
    conditioning,
    generate_outcome,
    image_keys,
    load_vectors,
)
from igmu.attacks.rows import ATTACK_FIELDS, outcome_from_row  # noqa: E402
from igmu.attacks.store import ATTACKS_NAME, read_attack_rows  # noqa: E402
from igmu.attacks.text_grad import project_simplex  # noqa: E402
from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.constants import NEGPROMPT, ORG, attack_set  # noqa: E402
from igmu.core.errors import ConfigError  # noqa: E402
from igmu.generation import GenerationSettings, ImageCache, cache_key, read_rows  # noqa: E402
from igmu.pipelines.attackable import AttackedModel  # noqa: E402
from igmu.tasks import load_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ALL = ["text_grad", "concept_vector", "textual_inversion", "seed_search"]
# Tiny budgets: these tests check plumbing, not attack strength (tests/test_attacks_miniworld.py).
SMALL = {"text_grad": {"batch": 1, "probe": 2, "checks": 2}, "textual_inversion": {"probe": 2},
         "concept_vector": {"population": 8}}
TIMING = ("wall_seconds", "search_seconds", "cpu_seconds")


@pytest.fixture(scope="module")
def sd_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from igmu.testing.tiny import make_tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny_sd_attack")
    pipeline = make_tiny_sd_pipeline(tokenizer_dir=folder / "tokenizer_files")
    pipeline.save_pretrained(str(folder / "pipeline"), safe_serialization=True)
    models = {"generator": {"model": str(folder / "pipeline"), "steps": 2, "guidance": 7.5,
                            "height": 32, "width": 32}}
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def generator(sd_models: Path):
    from igmu.generation.diffusers_backend import DiffusersGenerator

    config = load_models_config(sd_models)
    return DiffusersGenerator.load(config.get("generator")["model"], "generator.model")


def attack(out: Path, models: Path, attacks: list[str], **options):
    settings = {a: SMALL[a] for a in attacks if a in SMALL}
    opts = AttackOptions(**{"methods": [ORG, NEGPROMPT], "attacks": attacks, "prompts": 2,
                            "budget": 2, "settings": settings, "progress": False, **options})
    return run_attacks(load_task("church"), out, load_models_config(models), opts)


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_registry_and_did_you_mean() -> None:
    assert attack_names() == sorted(ALL)
    with pytest.raises(ConfigError, match="Did you mean 'text_grad'"):
        get_attack("text_gard")
    assert get_attack("Seed_Search").name == "seed_search"
    with pytest.raises(ConfigError, match="Did you mean 'tokens'"):
        get_attack("text_grad").settings({"tokenz": 3})
    with pytest.raises(ConfigError, match="positive"):
        get_attack("seed_search").settings({"budget": 0})
    assert get_attack("text_grad").settings({"tokens": "3"})["tokens"] == 3


def test_cli_unknown_attack_and_help(sd_models: Path, tmp_path: Path) -> None:
    result = run_cli("attack", "--task", "church", "--method", "ORG", "--attack",
                     "seed_serch", "--out", tmp_path / "x", "--models", sd_models, check=False)
    assert result.returncode == 2
    assert "Unknown attack 'seed_serch'. Did you mean 'seed_search'?" in result.stderr
    assert not (tmp_path / "x" / ATTACKS_NAME).exists()
    help_text = run_cli("attack", "--help").stdout
    assert "example: igmu generate" in help_text
    for name in ALL:
        assert f"  {name}: " in help_text


def test_project_simplex_against_bisection() -> None:
    """The sort-based projection equals the bisection on the threshold theta (sum(max(x -
    theta, 0)) = 1), computed independently in float64."""
    rows = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 0.3
    rows[0] = 1.0 / 50  # already on the simplex
    projected = project_simplex(rows.double())
    for row, got in zip(rows.double(), projected, strict=True):
        low, high = float(row.min()) - 1.0, float(row.max())
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if (row - mid).clamp_min(0).sum() > 1 else (low, mid)
        expected = (row - (low + high) / 2).clamp_min(0)
        assert torch.allclose(got, expected, atol=1e-9)
        assert abs(float(got.sum()) - 1.0) < 1e-9 and float(got.min()) >= 0
    assert torch.allclose(projected[0], rows[0].double())


def test_replaced_embeddings_and_model_space(generator) -> None:
    pipeline = generator.pipeline
    model = AttackedModel(pipeline, GenerationSettings(2, 7.5, 32, 32))
    ids = model.token_ids("a church on a hill")
    padded = model.padded(ids)
    assert padded.shape == (1, 77) and padded[0, len(ids):].eq(model.pad_id).all()
    reference = pipeline.text_encoder(padded)[0]
    table = model.embedding_table.weight
    vectors = table[ids[1:4]].clone().requires_grad_(True)
    states = model.encode(padded, [1, 2, 3], vectors)
    assert torch.equal(states, reference)  # the hook reproduces the ids path exactly
    states.sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    moved = model.encode(padded, [2], table[ids[3]][None])
    assert torch.equal(moved[:, :2], reference[:, :2])  # causal: earlier positions unchanged
    assert not torch.equal(moved[:, 2:], reference[:, 2:])
    # SD: x0 is the VAE posterior mean times the scaling factor of the image in [-1, 1]
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 127.5 - 1
    expected = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
    assert torch.allclose(model.to_model_space([image]), expected, atol=1e-6)


@pytest.mark.parametrize("negative", [None, "church"])
def test_token_ids_generate_what_the_text_generates(generator, tmp_path: Path, negative) -> None:
    settings = GenerationSettings(2, 7.5, 32, 32, negative)
    model = AttackedModel(generator.pipeline, settings)
    text = "a church on a hill"
    by_ids = AttackOutcome("token_ids", text, [0, 3], token_ids=model.token_ids(text))
    cache = ImageCache(tmp_path)
    found = generate_outcome(by_ids, generator, model, settings, cache)
    by_text = generator.generate([text, text], [0, 3], settings)
    for (key, _), image in zip(found, by_text, strict=True):
        stored = np.asarray(Image.open(cache.path(key)).convert("RGB"))
        assert np.array_equal(stored, image)
        assert key != cache_key(generator.fingerprint, text, 0, settings)  # ids are keyed apart
    assert conditioning(by_ids).startswith("\x00")


def test_every_attack_runs_on_tiny_sd(sd_models: Path, generator, tmp_path: Path) -> None:
    tokenizer = generator.pipeline.tokenizer
    out = tmp_path / "run"
    result = attack(out, sd_models, ALL)
    task = load_task("church")
    forget = task.prompt_set("forget").prompts()[:2]
    assert result.computed == 16 and result.cached == 0
    rows = read_attack_rows(out / ATTACKS_NAME)
    assert len(rows) == 16
    assert {(r["method"], r["attack"]) for r in rows} == {(m, a) for m in (ORG, NEGPROMPT)
                                                          for a in ALL}
    for row in rows:
        assert sorted(row) == sorted(ATTACK_FIELDS)
        prompt = forget[row["prompt_index"]]
        assert (row["class_name"], row["prompt"]) == (prompt.class_name, prompt.text)
        assert row["prompt_set"] == attack_set(row["attack"])
        assert row["budget"] == 2 and row["steps"] == 2 and row["seed"] == 0
        assert row["generation_settings"]["negative_prompt"] == (
            task.concept_name if row["method"] == NEGPROMPT else None)
        for image in row["images"]:
            assert (out / image["path"]).is_file()
        if row["attack"] == "seed_search":
            assert [i["seed"] for i in row["images"]] == [1000, 1001]
            assert row["adversarial_prompt"] == prompt.text and row["final_loss"] is None
        else:
            assert [i["seed"] for i in row["images"]] == [0]
            assert isinstance(row["final_loss"], float)
        if row["attack"] == "text_grad":
            # the answer is the candidate (a prefix, or the plain prompt) with the lowest probe loss
            losses = row["details"]["candidate_probe_losses"]
            assert "0" in losses  # step 0: the plain prompt
            assert row["final_loss"] == pytest.approx(min(losses.values()), rel=1e-5)
            if row["details"]["chosen_at_step"] == 0:
                assert row["generated_from"] == "text" and row["adversarial_prompt"] == prompt.text
            else:  # <sot>, 5 prefix tokens, the prompt's tokens, <eot>
                ids = row["adversarial_token_ids"]
                plain = tokenizer(prompt.text).input_ids
                assert ids[:1] + ids[6:] == plain and row["details"]["prefix_ids"] == ids[1:6]
        if row["attack"] == "textual_inversion":
            embedding = row["embedding"]
            data = (out / embedding["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == embedding["sha256"]
            assert load_vectors(data).shape == (1, 32) and embedding["positions"] == [1]
            assert row["adversarial_prompt"].endswith(prompt.text)
    # the learned token is shared by the prompts of one model, distinct between ORG and NEGPROMPT
    ti = {(r["method"], r["prompt_index"]): r["embedding"]["sha256"] for r in rows
          if r["attack"] == "textual_inversion"}
    assert ti[(ORG, 0)] == ti[(ORG, 1)] != ti[(NEGPROMPT, 0)]
    # concept_vector reads only the text encoder: the same prompt for ORG and NEGPROMPT
    cv = {(r["method"], r["prompt_index"]): r["adversarial_token_ids"] for r in rows
          if r["attack"] == "concept_vector"}
    assert cv[(ORG, 0)] == cv[(NEGPROMPT, 0)]

    manifest = read_rows(out / "manifest.jsonl")
    assert len(manifest) == sum(len(r["images"]) for r in rows)
    for entry in manifest:
        assert entry["prompt_set"].startswith("attack.")
        assert (out / entry["path"]).is_file()
    by_key = {(m["method"], m["prompt_set"], m["prompt_index"], m["seed"]): m for m in manifest}
    row = next(r for r in rows if r["attack"] == "concept_vector" and r["method"] == NEGPROMPT)
    entry = by_key[(NEGPROMPT, "attack.concept_vector", row["prompt_index"], 0)]
    assert entry["prompt"] == row["adversarial_prompt"]
    assert entry["adversarial_token_ids"] == row["adversarial_token_ids"]
    assert entry["original_prompt"] == row["prompt"]
    assert entry["settings"]["negative_prompt"] == "church"

    # a row says everything its images depend on: the cache keys follow from it again
    for row in rows:
        settings = GenerationSettings(**row["generation_settings"])
        keys = image_keys(outcome_from_row(row, out), row["model_fingerprint"], settings)
        assert keys == [i["key"] for i in row["images"]]

    before = (out / ATTACKS_NAME).read_bytes(), (out / "manifest.jsonl").read_bytes()
    again = attack(out, sd_models, ALL)
    assert again.computed == 0 and again.cached == 16
    assert ((out / ATTACKS_NAME).read_bytes(), (out / "manifest.jsonl").read_bytes()) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_then_rerun_matches_uninterrupted(sd_models: Path, tmp_path: Path) -> None:
    """Kill -9 `igmu attack` after some prompts, rerun: the attacks.jsonl rows (all but timing),
    the manifest and the images are those of an uninterrupted run. The run is the CLI's main() in
    a forked child: a separate process that dies by SIGKILL like any other."""
    from igmu.cli.attack_cmd import main

    argv = ["--task", "church", "--method", "ORG", "--attack", "text_grad,seed_search",
            "--prompts", "5", "--budget", "3", "--set", "text_grad.batch=1",
            "--set", "text_grad.probe=2", "--models", str(sd_models), "--threads", "1",
            "--quiet"]
    reference = tmp_path / "reference"
    assert main([*argv, "--out", str(reference)]) == 0

    out = tmp_path / "killed"
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = main([*argv, "--out", str(out)])
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    try:
        while len(list(out.glob("attacks/results/*/*.json"))) < 2:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pytest.fail(f"attack exited before it was killed (status {status})")
            if time.monotonic() > deadline:
                pytest.fail("no attack result after 120 s")
            time.sleep(0.005)
    finally:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    done_before = len(list(out.glob("attacks/results/*/*.json")))
    assert 2 <= done_before < 10, "the run must be killed midway"
    assert not (out / ATTACKS_NAME).exists()
    for path in out.glob("attacks/results/*/*.json"):  # every result present is whole
        json.loads(path.read_text(encoding="utf-8"))

    assert main([*argv, "--out", str(out)]) == 0
    ours, theirs = (read_attack_rows(d / ATTACKS_NAME) for d in (out, reference))
    assert without_timing(ours) == without_timing(theirs)
    assert (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()
    images = sorted(p.relative_to(out) for p in out.glob("images/*/*.png"))
    assert images == sorted(p.relative_to(reference) for p in reference.glob("images/*/*.png"))
    for path in images:
        assert (out / path).read_bytes() == (reference / path).read_bytes()
    assert not list(out.rglob("*.tmp"))


def test_seed_search_only_samples_the_model(tmp_path: Path) -> None:
    """seed_search is black-box: any Generator will do (here one that paints the seed), and its
    extra seeds are 1000 + budget * S + i, disjoint for different --seed S."""

    class SeedPainter:
        fingerprint = "seed-painter"

        def generate(self, prompts, seeds, settings):
            return [np.full((8, 8, 3), seed % 256, dtype=np.uint8) for seed in seeds]

    for seed, expected in ((0, [1000, 1001, 1002]), (1, [1003, 1004, 1005])):
        result = run_attacks(
            load_task("church"), tmp_path / str(seed), load_models_config(None),
            AttackOptions(methods=[ORG], attacks=["seed_search"], prompts=2, budget=3,
                          seed=seed, progress=False),
            factory=lambda model, field: SeedPainter())
        for row in result.rows:
            assert [i["seed"] for i in row["images"]] == expected
            for image in row["images"]:
                pixels = np.asarray(Image.open(tmp_path / str(seed) / image["path"]))
                assert (pixels == image["seed"] % 256).all()

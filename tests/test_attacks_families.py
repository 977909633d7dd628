"""Attacks through the family adapter: the attacked model encodes as the adapter does on tiny
SD-1.x and SDXL pipelines, soft vectors reach every text encoder, and every attack runs end to
end on a saved tiny SDXL pipeline folder through the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from helpers import tiny_family_pipeline  # noqa: E402
from igmu.attacks import attack_names  # noqa: E402
from igmu.attacks.imaging import image_keys  # noqa: E402
from igmu.attacks.rows import outcome_from_row  # noqa: E402
from igmu.attacks.store import ATTACKS_NAME, read_attack_rows  # noqa: E402
from igmu.core.constants import NEGPROMPT, ORG, attack_set  # noqa: E402
from igmu.dataset.layouts import read_manifest  # noqa: E402
from igmu.families import family_of  # noqa: E402
from igmu.generation import GenerationSettings  # noqa: E402
from igmu.pipelines.attackable import AttackedModel  # noqa: E402
from igmu.tasks import load_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PROMPTS = ["a church on a hill", "a red chair"]


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def pipe(request, tmp_path_factory: pytest.TempPathFactory):
    """A tiny pipeline of each model family."""
    return tiny_family_pipeline(request.param, tmp_path_factory)


def attacked(pipe, negative: str | None = None) -> AttackedModel:
    return AttackedModel(pipe, GenerationSettings(2, 7.5, 32, 32, negative))


def test_plain_ids_encode_as_the_adapter(pipe) -> None:
    model, adapter = attacked(pipe), family_of(pipe)
    ids = model.padded_batch([model.token_ids(p) for p in PROMPTS])
    cond, expected = model.condition(ids), adapter.encode_prompts(PROMPTS)
    assert torch.equal(cond.hidden, expected.hidden)
    assert torch.equal(model.encode(ids), expected.hidden)
    if adapter.name == "sdxl":
        assert torch.equal(cond.pooled, expected.pooled)
        # one row of ids per encoder, each padded with its tokenizer's pad id ("!" for the 2nd)
        assert ids.shape == (2, 2, 77) and model.pad_ids[0] != model.pad_ids[1]
        assert ids[0, 1, -1] == pipe.tokenizer_2.pad_token_id
        assert torch.equal(ids[:, 1], adapter.tokenize(PROMPTS).ids[1])
        assert torch.equal(model.negative_states().pooled, torch.zeros_like(cond.pooled[:1]))
    else:
        assert cond.pooled is None and ids.shape == (2, 77)
    church = attacked(pipe, "church").negative_states()
    assert torch.equal(church.hidden, adapter.unconditional("church").hidden)


def test_table_vectors_give_the_ids_conditioning_and_gradients(pipe) -> None:
    model = attacked(pipe, "church")  # a negative prompt: the guided loss
    ids = model.token_ids(PROMPTS[0])
    padded = model.padded(ids)
    plain = model.condition(padded)
    vectors = tuple(table.weight[ids[1:4]].detach().clone().requires_grad_(True)
                    for table in model.embedding_tables)
    assert len(vectors) == len(family_of(pipe).text_encoders)
    cond = model.condition(padded, [1, 2, 3], vectors)
    assert torch.equal(cond.hidden, plain.hidden)
    if plain.pooled is not None:
        assert torch.equal(cond.pooled, plain.pooled)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x0 = model.to_model_space([image, image])
    draws = model.draw(x0, 2, torch.Generator().manual_seed(0))
    assert model.guided("auto")
    model.loss(draws, cond, guided=True).backward()
    for vector in vectors:  # every encoder's vectors steer the prediction
        assert vector.grad is not None and vector.grad.abs().sum() > 0
    if len(vectors) > 1:
        with pytest.raises(ValueError, match="vector sets"):
            model.condition(padded, [1], vectors[0][:1])


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("tiny_sdxl_attack")
    make_tiny_sdxl_pipeline(tokenizer_dir=folder / "tok").save_pretrained(str(folder / "sdxl"))
    models = {"generator": {"model": str(folder / "sdxl"), "steps": 2, "guidance": 7.5,
                            "height": 32, "width": 32}}
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    return path


def test_every_attack_runs_on_a_saved_sdxl_pipeline(sdxl_models: Path, tmp_path: Path) -> None:
    from igmu.cli.attack_cmd import main

    out, attacks = tmp_path / "run", attack_names()
    argv = ["--task", "church", "--method", f"{ORG},{NEGPROMPT}", "--attack", ",".join(attacks),
            "--prompts", "1", "--budget", "2", "--models", str(sdxl_models), "--out", str(out),
            "--set", "text_grad.batch=1", "--set", "text_grad.probe=2",
            "--set", "text_grad.checks=2", "--set", "textual_inversion.probe=2",
            "--set", "concept_vector.population=8", "--threads", "1", "--quiet"]
    assert main(argv) == 0
    task = load_task("church")
    prompt = task.prompt_set("forget").prompts()[0]
    rows = read_attack_rows(out / ATTACKS_NAME)
    assert {(r["method"], r["attack"]) for r in rows} == {(m, a) for m in (ORG, NEGPROMPT)
                                                          for a in attacks}
    for row in rows:
        assert (row["prompt"], row["prompt_index"], row["budget"]) == (prompt.text, 0, 2)
        assert row["prompt_set"] == attack_set(row["attack"]) and row["images"]
        assert row["generation_settings"]["negative_prompt"] == (
            task.concept_name if row["method"] == NEGPROMPT else None)
        settings = GenerationSettings(**row["generation_settings"])
        keys = image_keys(outcome_from_row(row, out), row["model_fingerprint"], settings)
        assert keys == [i["key"] for i in row["images"]]
        if row["attack"] != "seed_search":
            assert isinstance(row["final_loss"], float) and np.isfinite(row["final_loss"])
        if row["attack"] == "textual_inversion":  # one learned vector per text encoder
            from safetensors import safe_open

            path = out / row["embedding"]["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row["embedding"]["sha256"]
            with safe_open(str(path), framework="pt") as handle:
                shapes = {name: tuple(handle.get_tensor(name).shape) for name in handle.keys()}  # noqa: SIM118
            assert shapes == {"vectors": (1, 32), "vectors_2": (1, 32)}
    # igmu evaluate's reader takes the manifest; every image decodes at the generated size
    records = read_manifest(out / "manifest.jsonl", task)
    assert len(records) == sum(len(r["images"]) for r in rows)
    for record in records:
        with Image.open(record.path) as image:
            assert image.convert("RGB").size == (32, 32)


def test_a_weights_entry_is_attacked_as_generate_loads_it(tmp_path: Path) -> None:
    """A models-file method given as base + UNet weights is loaded by its PipelineSource, as
    `igmu generate` loads it (not as a folder named by its description)."""
    from safetensors.torch import save_file

    from igmu.attacks.engine import AttackOptions, run_attacks
    from igmu.backbones.config import load_models_config
    from igmu.generation.diffusers_backend import DiffusersGenerator
    from igmu.generation.plan import base_settings, resolve_method
    from igmu.testing.tiny import make_tiny_sd_pipeline

    pipeline = make_tiny_sd_pipeline(tokenizer_dir=tmp_path / "tok")
    pipeline.save_pretrained(str(tmp_path / "sd"))
    save_file({k: v * 0.5 for k, v in pipeline.unet.state_dict().items()},
              str(tmp_path / "half.safetensors"))
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({
        "generator": {"model": "./sd", "steps": 2, "height": 32, "width": 32},
        "methods": {"HALF": {"unet": "./half.safetensors"}}}), encoding="utf-8")
    models, task = load_models_config(path), load_task("church")
    result = run_attacks(task, tmp_path / "out", models, AttackOptions(
        methods=["HALF"], attacks=["concept_vector", "seed_search"], prompts=1, budget=1,
        settings={"concept_vector": {"population": 4}}, progress=False))
    settings = base_settings(models, AttackOptions([], []).overrides)
    spec = resolve_method("HALF", task, models, settings)
    expected = DiffusersGenerator.load(spec.pipeline_source, spec.field).fingerprint
    assert {r["model_fingerprint"] for r in result.rows} == {expected}
    assert DiffusersGenerator.load(str(tmp_path / "sd"), "x").fingerprint != expected

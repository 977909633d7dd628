"""SLD (inference-time safety guidance): the sampler hook against diffusers' own
StableDiffusionPipelineSafe, the method card read by generation and attacks, SDXL and
v-prediction, settings checks; the MiniWorld check behind ``slow``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.errors import ConfigError  # noqa: E402
from igmu.generation.base import GenerationSettings  # noqa: E402
from igmu.methods import get_method  # noqa: E402
from igmu.pipelines.guidance import (  # noqa: E402
    SafeLatentGuidance,
    epsilon_factors,
    sampling_with,
)
from igmu.tasks import load_task  # noqa: E402
from igmu.testing.method_checks import load_sampled, sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PROMPTS = ["a church in the snow", "a red apple on a table"]
SLD = SafeLatentGuidance(concept="church", scale=1000, warmup=0.4, threshold=0.01,
                         momentum_scale=0.3, momentum_beta=0.4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("sld")
    pipeline = make_tiny_sd_pipeline(32, 77, tokenizer_dir=root / "tokenizer_files")
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(str(root / "base"), safe_serialization=True)
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"generator": {
        "model": str(root / "base"), "steps": 3, "height": 32, "width": 32}}))
    return {"root": root, "pipeline": pipeline, "base": root / "base", "models": models}


@pytest.fixture(scope="module")
def church():
    return load_task("church")


def run(pipeline, guidance, steps=5, scale=7.5):
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    with torch.no_grad(), sampling_with(guidance, pipeline, len(PROMPTS), steps):
        return pipeline(prompt=PROMPTS, generator=generators, num_inference_steps=steps,
                        guidance_scale=scale, height=32, width=32, output_type="np").images


def test_hook_matches_diffusers_safe_pipeline(tiny) -> None:
    from diffusers import StableDiffusionPipelineSafe

    pipe = tiny["pipeline"]
    safe = StableDiffusionPipelineSafe(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = SLD.concept
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    reference = safe(prompt=PROMPTS, generator=generators, num_inference_steps=5,
                     guidance_scale=7.5, height=32, width=32, output_type="np",
                     sld_guidance_scale=1000, sld_warmup_steps=2, sld_threshold=0.01,
                     sld_momentum_scale=0.3, sld_mom_beta=0.4).images
    ours = run(pipe, SLD)
    plain = run(pipe, None)
    assert np.abs(ours - reference).max() < 1e-5
    assert np.abs(ours - plain).max() > 1e-3  # the guidance did something
    # no safety scale and no momentum: the plain pipeline's images, bit for bit
    off = SafeLatentGuidance(concept="church", scale=0, momentum_scale=0)
    assert np.array_equal(run(pipe, off), plain)
    # without classifier-free guidance SLD is off, as in diffusers
    assert np.array_equal(run(pipe, SLD, scale=1.0), run(pipe, None, scale=1.0))


def test_epsilon_factors_recover_the_noise_of_a_v_model() -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    clean, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([10, 500, 990])
    noisy = scheduler.add_noise(clean, noise, t)
    v = scheduler.get_velocity(clean, noise, t)
    a, b = epsilon_factors(scheduler, t, v)
    assert torch.allclose(a * v + b * noisy, noise, atol=1e-5)
    assert epsilon_factors(DDIMScheduler(), t, v) == (1.0, 0.0)


def test_card_drives_generation_cache_keys_and_attacks(tiny, church, tmp_path) -> None:
    from igmu.generation import GenerateOptions, generate
    from igmu.pipelines.attackable import AttackedModel

    result = get_method("SLD").apply(str(tiny["base"]), church,
                                     {"progress": False, "card_only": True}, tmp_path / "sld")
    card = result.card
    assert card["weights_changed"] is False and card["sampler_guidance"]["concept"] == "church"
    assert card["sampler_guidance"]["scale"] == 1000.0  # the medium preset
    assert not (tmp_path / "sld" / "model_index.json").exists()

    models_file = tmp_path / "models.yaml"
    values = yaml.safe_load(tiny["models"].read_text())
    values["methods"] = {"SLD": str(tmp_path / "sld")}
    models_file.write_text(yaml.safe_dump(values))
    models = load_models_config(models_file)
    loaded = load_sampled(tmp_path / "sld", church, models)
    assert loaded.sampler_guidance == SafeLatentGuidance.from_dict(card["sampler_guidance"], "")
    out = generate(church, tmp_path / "images", models, GenerateOptions(
        methods=["ORG", "SLD"], prompt_sets=["forget"], max_prompts_per_class=1,
        progress=False))
    rows = {r["method"]: r for r in out.rows}
    assert rows["ORG"]["key"] != rows["SLD"]["key"]
    pixels = {m: np.asarray(__import__("PIL.Image").Image.open(
        tmp_path / "images" / r["path"])) for m, r in rows.items()}
    assert not np.array_equal(pixels["ORG"], pixels["SLD"])
    # the generated image is what sampling the card's model gives
    assert np.array_equal(pixels["SLD"], sample(loaded, [rows["SLD"]["prompt"]], [0], steps=3,
                                                guidance=7.5)[0])

    # a method without sampler guidance keeps the cache key it had (no new field in it)
    plain = GenerationSettings(3, 7.5, 32, 32)
    assert "sampler_guidance" not in plain.as_dict()
    guided = GenerationSettings(**{**plain.as_dict(), "sampler_guidance": card[
        "sampler_guidance"]})
    assert guided.as_dict()["sampler_guidance"]["concept"] == "church"

    # attacks see the model as sampled: the guided loss is on by default, and is SLD's
    model = AttackedModel(loaded.pipeline, guided)
    assert model.guided("auto")
    latents = torch.randn(2, 4, 4, 4)
    t = torch.tensor([100, 900])
    cond = model.family.encode_prompts(PROMPTS)
    with torch.no_grad():
        sld = model.predict(latents, t, cond, guided=True)
        cfg = model.family.guided_noise(latents, t, cond, model.negative_states(), 7.5)
    assert not torch.allclose(sld, cfg)
    off = AttackedModel(loaded.pipeline, GenerationSettings(
        3, 7.5, 32, 32, sampler_guidance={"concept": "church", "scale": 0,
                                          "momentum_scale": 0}))
    with torch.no_grad():
        assert torch.allclose(off.predict(latents, t, cond, guided=True), cfg, atol=1e-6)


def test_sdxl(tmp_path) -> None:
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    pipeline = make_tiny_sdxl_pipeline(tokenizer_dir=tmp_path / "tok")
    pipeline.set_progress_bar_config(disable=True)
    guided, plain = run(pipeline, SLD, steps=3), run(pipeline, None, steps=3)
    assert np.abs(guided - plain).max() > 1e-4
    off = SafeLatentGuidance(concept="church", scale=0, momentum_scale=0)
    assert np.array_equal(run(pipeline, off, steps=3), plain)


def test_settings_are_checked(church, tiny, tmp_path) -> None:
    method = get_method("sld")
    for bad, match in (({"preset": "extreme"}, "preset"), ({"warmup": "2"}, "warmup"),
                       ({"scale": "lots"}, "scale"), ({"momentum_beta": -1}, "momentum_beta")):
        with pytest.raises(ConfigError, match=match):
            method.apply(Path("/nonexistent/base"), church, {**bad, "progress": False},
                         Path("/nonexistent/out"))
    with pytest.raises(ConfigError, match="Did you mean 'preset'"):
        method.settings({"presett": "weak"})
    result = method.apply(str(tiny["base"]), church,
                          {"progress": False, "preset": "strong", "scale": "1500",
                           "concept": "a steeple"}, tmp_path / "out")
    guidance = result.card["sampler_guidance"]
    assert guidance["scale"] == 1500.0 and guidance["threshold"] == 0.025
    assert guidance["concept"] == "a steeple"
    assert (tmp_path / "out" / "model_index.json").is_file()  # the base written again
    assert json.loads((tmp_path / "out" / "igmu_method.json").read_text())["hyperparameters"][
        "preset"] == "strong"
    with pytest.raises(ConfigError, match="sampler_guidance has unknown fields"):
        SafeLatentGuidance.from_dict({"concept": "x", "sclae": 1}, "card")


@pytest.mark.slow
def test_miniworld_residual(tmp_path) -> None:
    from igmu.backbones.config import default_models_config
    from igmu.testing.method_checks import residual_rate

    task = load_task("mini_object")
    base = str(default_models_config(task).get("generator")["model"])
    org = residual_rate(load_sampled(Path(base), task), task)
    get_method("SLD").apply(base, task, {"progress": False}, tmp_path / "out")
    assert residual_rate(load_sampled(tmp_path / "out", task), task) < org

"""Model families: the adapter matches the pipelines' own code exactly, and UCE, ESD and
generation run on tiny SD-1.x and SDXL pipelines through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from helpers import tiny_family_pipeline  # noqa: E402
from igmu.core.errors import ConfigError  # noqa: E402
from igmu.families import family_of  # noqa: E402
from igmu.methods import get_method  # noqa: E402
from igmu.methods.pipeline import copy_with_private_unet  # noqa: E402
from igmu.tasks import load_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PROMPTS = ["a church on a hill", "a red chair"]
QUIET = {"progress": False}


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def pipe(request, tmp_path_factory: pytest.TempPathFactory):
    """A tiny pipeline of each model family."""
    return tiny_family_pipeline(request.param, tmp_path_factory)


def test_detection_and_context(pipe) -> None:
    adapter = family_of(pipe)
    assert adapter.name == ("sdxl" if "XL" in type(pipe).__name__ else "sd")
    # SDXL's context is both encoders' features side by side (32 + 32 here, 768 + 1280 real)
    widths = [e.config.hidden_size for e in adapter.text_encoders]
    assert adapter.context_dim == sum(widths)
    assert len(adapter.cross_attention_projections()) == 2 * len(adapter.cross_attention_modules())
    with pytest.raises(ConfigError, match=r"no model family.*sd:.*sdxl:"):
        family_of(object())


def test_prompt_encoding_is_the_pipelines(pipe) -> None:
    adapter = family_of(pipe)
    cond = adapter.encode_prompts(PROMPTS)
    if adapter.name == "sdxl":
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, device="cpu",
                                                          do_classifier_free_guidance=True)
        assert torch.equal(cond.pooled, pooled)
        assert torch.equal(neg_pooled, torch.zeros_like(pooled))
        assert torch.equal(adapter.unconditional(None, 2).pooled, neg_pooled)
        with_neg = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True,
                                      negative_prompt=["church", "church"])
        assert torch.equal(adapter.unconditional("church", 2).hidden, with_neg[1])
    else:
        pos, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=None)
    assert torch.equal(cond.hidden, pos)
    assert torch.equal(adapter.unconditional(None, 2).hidden, neg)


def test_input_embeddings_give_the_ids_conditioning_and_gradients(pipe) -> None:
    adapter = family_of(pipe)
    tokens = adapter.tokenize(PROMPTS)
    embeds = tuple(e.detach().clone().requires_grad_(True)
                   for e in adapter.token_embeddings(tokens.ids))
    cond = adapter.encode(tokens.ids, embeds)
    assert torch.equal(cond.hidden, adapter.encode(tokens.ids).hidden)
    seeded = torch.Generator().manual_seed(0)
    latents = torch.randn(adapter.latent_shape(2, 32, 32), generator=seeded)
    adapter.predict_noise(latents, torch.tensor(500), cond).square().mean().backward()
    assert all(e.grad is not None and e.grad.abs().sum() > 0 for e in embeds)


def test_denoising_through_the_adapter_is_the_pipelines(pipe) -> None:
    """The adapter's guided prediction in a plain sampling loop gives the pipeline's image,
    byte for byte."""
    from diffusers.utils.torch_utils import randn_tensor

    adapter = family_of(pipe)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=5.0, height=32, width=32,
               generator=gens, output_type="np").images
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    cond, uncond = adapter.encode_prompts(PROMPTS), adapter.unconditional(None, 2)
    latents = randn_tensor(adapter.latent_shape(2, 32, 32), generator=gens,
                           dtype=cond.hidden.dtype)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(3)
    latents = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(latents, t)
            noise = adapter.guided_noise(model_in, t, cond, uncond, 5.0)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="np")
    assert np.array_equal(image, out)


def test_generation_from_conditioning_matches_prompts(pipe) -> None:
    from igmu.generation.base import GenerationSettings
    from igmu.generation.diffusers_backend import DiffusersGenerator

    settings = GenerationSettings(2, 7.5, 32, 32, negative_prompt="church")
    generator = DiffusersGenerator(pipe, pipeline_batch=2)
    from_text = generator.generate(PROMPTS, [0, 1], settings)
    cond = generator.family.encode_prompts(PROMPTS)
    from_cond = generator.generate_from_conditioning(cond, [0, 1], settings)
    assert all(np.array_equal(a, b) for a, b in zip(from_text, from_cond, strict=True))
    assert generator.describe()["family"] == generator.family.name


def test_uce_on_both_families(pipe) -> None:
    """The closed form on the projections that read the (for SDXL concatenated) context: the
    concept's keys/values land on the anchor's, preserved ones stay, nothing else moves."""
    adapter = family_of(pipe)
    method = get_method("UCE")
    edited = copy_with_private_unet(pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    outcome = method.edit(edited, load_task("church"), method.settings({"lamb": 1e-6, **QUIET}))
    after = edited.unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {f"{n}.weight" for n, _ in adapter.cross_attention_projections()}
    assert outcome.stats["to_k.erase_residual_max"] < 1e-3
    assert outcome.stats["to_v.preserve_drift_max"] < 1e-3
    weight = dict(adapter.cross_attention_projections(edited.unet))
    assert all(w.weight.shape[1] == adapter.context_dim for w in weight.values())


def test_esd_on_both_families(pipe) -> None:
    method = get_method("ESD")
    settings = method.settings({"steps": 3, "lr": 1e-3, "ddim_steps": 3, "latent_size": 8,
                                "probe": 2, **QUIET})
    runs = []
    for _ in range(2):
        edited = copy_with_private_unet(pipe)
        outcome = method.edit(edited, load_task("church"), settings)
        runs.append((outcome, edited.unet.state_dict()))
    outcome, state = runs[0]
    assert outcome.stats["probe_loss_after"] < outcome.stats["probe_loss_before"]
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(".attn2." in k for k in changed)
    assert all(torch.equal(state[k], runs[1][1][k]) for k in state)  # deterministic


def test_generate_and_unlearn_on_a_saved_sdxl_pipeline(tmp_path: Path) -> None:
    """`igmu generate` and `igmu unlearn` on an SDXL pipeline folder, from the models file."""
    import yaml

    from igmu.backbones.config import load_models_config
    from igmu.generation import GenerateOptions, generate, read_rows
    from igmu.methods import unlearn
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    make_tiny_sdxl_pipeline(tokenizer_dir=tmp_path / "tok").save_pretrained(tmp_path / "sdxl")
    church = load_task("church")
    card = unlearn("UCE", str(tmp_path / "sdxl"), church, tmp_path / "uce", QUIET).card
    # 8 cross-attentions (two transformer layers per SDXL block) x (to_k, to_v)
    assert card["stats"]["edited_projections"] == 16
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({
        "generator": {"model": "./sdxl", "steps": 2, "height": 32, "width": 32},
        "methods": {"UCE": "./uce"},
    }))
    options = GenerateOptions(methods=["ORG", "NEGPROMPT", "UCE"], prompt_sets=["forget"],
                              max_prompts_per_class=2, batch_size=2, progress=False)
    result = generate(church, tmp_path / "out", load_models_config(models), options)
    rows = read_rows(tmp_path / "out" / "manifest.jsonl")
    assert result.generated == len(rows) == 6
    shas = {(r["method"], r["prompt_index"]): r["sha256"] for r in rows}
    assert shas[("ORG", 0)] != shas[("UCE", 0)] and shas[("ORG", 0)] != shas[("NEGPROMPT", 0)]

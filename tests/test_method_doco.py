"""DoCo on tiny random SD and SDXL pipelines: deterministic with its seed, changes only the
cross-attention keys and values it declares, records its cost, and its published form (the
authors' trained tensors as a ``weights:`` safetensors file) loads back through a models file
and samples what the edited model in memory samples. The gradient surgery and the
discriminator's shapes are checked against the authors' formulas; the authors' own nested
``delta.bin`` pickle form loads through the same field, an object-holding pickle is refused.

The MiniWorld check (DoCo at its MiniWorld defaults against ORG on ``mini_object``) trains for
minutes: it is behind the ``slow`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.errors import ConfigError, UnsafeWeightsError  # noqa: E402
from igmu.methods import get_method  # noqa: E402
from igmu.methods.doco import (  # noqa: E402
    WEIGHTS_FILE,
    patch_discriminator,
    preserving_gradient,
)
from igmu.methods.pipeline import load_pipeline  # noqa: E402
from igmu.pipelines.sources import PipelineSource, load_source  # noqa: E402
from igmu.tasks import load_task  # noqa: E402
from igmu.testing.method_checks import (  # noqa: E402
    is_xattn_kv,
    load_method,
    module_state,
    same_images,
    sample,
    save_tiny_base,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FAST = {"progress": False, "latent_size": 8, "steps": 4, "warm_up": 1, "lr": 1e-3,
        "images": 2, "image_steps": 2, "probe": 1, "batch_size": 2}
PROMPTS = ["a church in the snow", "a red apple on a table"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sd_pipeline

    return save_tiny_base(tmp_path_factory.mktemp("doco"), make_tiny_sd_pipeline)


@pytest.fixture(scope="module")
def church():
    return load_task("church")


def test_doco_on_tiny_sd(tiny, church, tmp_path) -> None:
    from safetensors.torch import load_file

    method = get_method("DoCo")
    card = method.apply(str(tiny["base"]), church, FAST, tmp_path / "out").card
    assert card["method"] == "DoCo" and card["seed"] == 0
    assert card["models_entry"] == {"weights": [WEIGHTS_FILE]} and not card["pipeline_folder"]
    hyper, stats = card["hyperparameters"], card["stats"]
    assert hyper["d_lr"] == 1e-4 and hyper["d_depth"] == 1 and hyper["x0_clip"] is None
    # steps 0..3 with warm_up 1: D trains every step, the model on steps 2 and 3
    assert len(stats["d_loss"]) == 4 and len(stats["adv_loss"]) == 2
    assert len(stats["prior_loss"]) == 2 and 0 <= stats["conflict_share"] <= 1
    assert stats["probe_x0_gap_after"] != stats["probe_x0_gap_before"]
    assert "church" in card["concept_words"] and card["anchor"] == ""

    # The cost: measured, and the parameter count agrees with the tensors that changed.
    cost = card["cost"]
    assert cost["wall_seconds"] > 0 and cost["cpu_seconds"] > 0
    assert cost["peak_memory_bytes"] > 0 and cost["bytes_written"] > 0
    assert cost["threads"] == torch.get_num_threads() and cost["device"] == "cpu"

    # The edited model in memory: only the declared cross-attention keys/values change ...
    pipeline, _ = load_pipeline(str(tiny["base"]), progress=False)
    base_unet, base_text = module_state(pipeline.unet), module_state(pipeline.text_encoder)
    outcome = method.edit(pipeline, church, method.settings(FAST, church))
    after = module_state(pipeline.unet)
    changed = {k for k in base_unet if not torch.equal(base_unet[k], after[k])}
    assert changed and all(is_xattn_kv(n) for n in changed)
    assert changed == set(outcome.edited_parameters) == set(card["edited_parameters"])
    assert all(torch.equal(v, pipeline.text_encoder.state_dict()[k]) for k, v in base_text.items())
    assert cost["changed_tensors"] == len(changed)
    assert cost["changed_parameters"] == sum(base_unet[n].numel() for n in changed)

    # ... the written form holds every trained tensor (as the authors' delta.bin) ...
    written = load_file(str(tmp_path / "out" / WEIGHTS_FILE))
    trained = {n for n in base_unet if is_xattn_kv(n)}
    assert set(written) == {f"unet.{n}" for n in trained}
    assert all(torch.equal(written[f"unet.{n}"], after[n]) for n in trained)

    # ... and, loaded through a models file, samples what the edited model samples.
    models = load_models_config(tiny["models"])
    pipeline.set_progress_bar_config(disable=True)
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    assert same_images(ours, sample(load_method(tmp_path / "out", church, models), PROMPTS,
                                    [0, 1], steps=2))
    org = sample(load_method(tiny["base"], church, models), PROMPTS, [0, 1], steps=2)
    assert not same_images(ours, org)

    # Deterministic: the same seed gives the same weights and statistics.
    again = method.apply(str(tiny["base"]), church, FAST, tmp_path / "again").card
    for key in ("unet_state_sha256", "edited_parameters", "stats"):
        assert again[key] == card[key], key
    assert (tmp_path / "again" / WEIGHTS_FILE).read_bytes() == (
        tmp_path / "out" / WEIGHTS_FILE).read_bytes()

    # The authors' own form: {"unet": {name: tensor}} pickled (delta.bin) loads through the
    # same 'weights:' field; a pickle that holds an object is refused, not executed.
    torch.save({"unet": {n: after[n] for n in trained}}, tmp_path / "delta.bin")
    theirs = load_source(PipelineSource(str(tiny["base"]), weights=(str(tmp_path / "delta.bin"),)))
    theirs.set_progress_bar_config(disable=True)
    assert same_images(ours, sample(theirs, PROMPTS, [0, 1], steps=2))
    torch.save({"unet": {}, "meta": Path("x")}, tmp_path / "unsafe.bin")
    with pytest.raises(UnsafeWeightsError, match="refusing"):
        load_source(PipelineSource(str(tiny["base"]), weights=(str(tmp_path / "unsafe.bin"),)))


def test_doco_variants_change_the_update(tiny, church) -> None:
    """The surgery modes and the authors' D-gradient carry-over each change the trained
    weights; ``surgery=none`` trains on the summed loss (no conflicts counted)."""
    from igmu.methods.pipeline import copy_with_private_unet
    from igmu.pipelines.load import module_sha256

    method = get_method("DoCo")
    base, _ = load_pipeline(str(tiny["base"]), progress=False)
    shas = set()
    for extra in ({}, {"surgery": "pcgrad"}, {"surgery": "none"},
                  {"d_keeps_g_grad": False}):
        pipeline = copy_with_private_unet(base)
        outcome = method.edit(pipeline, church, method.settings({**FAST, **extra}, church))
        shas.add(module_sha256(pipeline.unet))
        if extra.get("surgery") == "none":
            assert outcome.stats["conflict_share"] is None and outcome.stats["prior_loss"]
    assert len(shas) == 4


def test_gradient_surgery_formulas() -> None:
    g = torch.tensor([[0.3, 0.0]])
    b = torch.tensor([[-2.0, 2.0]])  # cos(g, b) = -1/sqrt(2)
    unit = b / b.norm()
    cos = -(2 ** -0.5)
    (authors,), hits = preserving_gradient([g], [b], [True], "authors", 1.0)
    assert hits == 1 and torch.allclose(authors, g - cos * unit)  # the unit direction, not |g|
    (pcgrad,), _ = preserving_gradient([g], [b], [True], "pcgrad", 1.0)
    assert torch.allclose(pcgrad, g - (g * unit).sum() * unit)
    assert abs(float((pcgrad * b).sum())) < 1e-6  # the exact projection is orthogonal to b
    # no conflict, or a tensor outside the cross-attention: untouched
    out, hits = preserving_gradient([g, g], [-b, b], [True, False], "authors", 1.0)
    assert hits == 0 and all(torch.equal(o, g) for o in out)


def test_discriminator_is_the_authors_patchgan_scaled_by_depth() -> None:
    full = patch_discriminator(4, 64)  # SD-1.x latents: the authors' four blocks
    convs = [m for m in full if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in full) == 3
    assert full(torch.zeros(2, 4, 64, 64)).shape == (2, 1, 3, 3)
    world = patch_discriminator(3, 32)  # the MiniWorld's pixels: three blocks, same 3x3 map
    assert world(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 3, 3)
    assert patch_discriminator(4, 128)(torch.zeros(1, 4, 128, 128)).shape == (1, 1, 7, 7)
    with pytest.raises(ConfigError, match="d_depth"):
        patch_discriminator(4, 8, depth=3)


def test_doco_on_tiny_sdxl(tmp_path_factory, church, tmp_path) -> None:
    """The same code on SDXL's two text encoders, pooled embedding and size ids."""
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    xl = save_tiny_base(tmp_path_factory.mktemp("doco_xl"), make_tiny_sdxl_pipeline)
    method = get_method("DoCo")
    card = method.apply(str(xl["base"]), church, FAST, tmp_path / "out").card
    assert card["models_entry"] == {"weights": [WEIGHTS_FILE]}
    assert card["hyperparameters"]["x0_clip"] is None  # Euler's config does not clip
    pipeline, _ = load_pipeline(str(xl["base"]), progress=False)
    outcome = method.edit(pipeline, church, method.settings(FAST, church))
    assert outcome.edited_parameters and all(is_xattn_kv(n) for n in outcome.edited_parameters)
    pipeline.set_progress_bar_config(disable=True)
    models = load_models_config(xl["models"])
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    assert same_images(ours, sample(load_method(tmp_path / "out", church, models), PROMPTS,
                                    [0, 1], steps=2))
    assert not same_images(ours, sample(load_method(xl["base"], church, models), PROMPTS,
                                        [0, 1], steps=2))


def test_settings_are_checked_before_loading(church) -> None:
    method = get_method("DoCo")
    for bad in ({"surgery": "pcgrad2"}, {"params": "embedding"}, {"warm_up": -1},
                {"d_lr": -1e-4}, {"surgery_lambda": -1}, {"d_width": 0}, {"lr": 0},
                {"batch_size": 0}):
        with pytest.raises(ConfigError, match="DoCo setting"):
            method.apply(Path("/nonexistent/base"), church, {**bad, "progress": False},
                         Path("/nonexistent/out"))
    with pytest.raises(ConfigError, match="Did you mean 'warm_up'"):
        method.settings({"warmup": 10})
    with pytest.raises(ConfigError, match="Did you mean .DoCo."):
        get_method("DoCoo")
    world = method.settings(None, load_task("mini_object"))
    assert world["steps"] < method.defaults["steps"] and world["images"] == 120


@pytest.mark.slow
def test_lowers_org_residual_on_mini_object(tmp_path) -> None:
    from igmu.backbones.config import default_models_config
    from igmu.testing.method_checks import residual_rate

    task = load_task("mini_object")
    base = str(default_models_config(task).get("generator")["model"])
    org = residual_rate(load_method(Path(base), task), task)
    card = get_method("DoCo").apply(base, task, {"progress": False}, tmp_path / "out").card
    assert card["hyperparameters"]["d_depth"] == 3 and card["hyperparameters"]["x0_clip"] == 1.0
    assert residual_rate(load_method(tmp_path / "out", task), task) < org

"""The method zoo (FMN, CA, SalUn, ConceptPrune, AdvUnlearn, RECE, SPEED, Receler) on a tiny
random SD pipeline: each run is deterministic with its seed, changes only what the method says
it changes (the cost meter's digests of every tensor, and the saved weights), records its cost,
and its written form loads back through a models file and samples the same images as the edited
model in memory.

The MiniWorld checks (each method at its MiniWorld defaults against ORG on ``mini_object``)
train for up to two minutes each: they are behind the ``slow`` marker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.errors import ConfigError  # noqa: E402
from igmu.methods import METHODS, get_method  # noqa: E402
from igmu.methods.pipeline import load_pipeline  # noqa: E402
from igmu.tasks import load_task  # noqa: E402
from igmu.testing.method_checks import load_method, module_state, sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"progress": False, "latent_size": 8}
FAST = {
    "FMN": {**SMALL, "steps": 3, "lr": 1e-3, "images": 2, "image_steps": 2, "probe": 1,
            "params": "xattn"},
    "CA": {**SMALL, "steps": 3, "lr": 1e-3, "images": 2, "image_steps": 2, "probe": 1,
           "batch_size": 2},
    "SalUn": {**SMALL, "epochs": 1, "lr": 1e-3, "images": 4, "image_steps": 2, "batch_size": 2,
              "mask_ratio": 0.1},
    "ConceptPrune": {**SMALL, "ddim_steps": 3, "timesteps": 2, "skill_ratio": 0.1},
    "RECE": {"progress": False, "epochs": 2},
    "SPEED": {"progress": False},
    "Receler": {**SMALL, "steps": 3, "lr": 1e-2, "ddim_steps": 3, "rank": 4, "advrs_iters": 2,
                "advrs_prompts": 2},
    "AdvUnlearn": {**SMALL, "steps": 3, "lr": 1e-3, "warmup": 1, "attack_steps": 2,
                   "ddim_steps": 3, "retain_batch": 1, "probe": 1},
}
PROMPTS = ["a church in the snow", "a red apple on a table"]


def unet_changes_allowed(method: str, name: str) -> bool:
    """What each method (at the FAST settings) may change in the UNet."""
    parts = name.split(".")
    if method == "FMN":  # params=xattn
        return "attn2" in parts
    if method == "SPEED":  # params=V
        return "attn2" in parts and parts[parts.index("attn2") + 1] == "to_v"
    if method in ("CA", "RECE"):  # params=xattn-kv; RECE's closed form
        return "attn2" in parts and parts[parts.index("attn2") + 1] in ("to_k", "to_v")
    if method == "SalUn":  # params=unet, masked
        return True
    return False  # ConceptPrune adds masks, AdvUnlearn trains the text encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sd_pipeline

    root = tmp_path_factory.mktemp("zoo")
    pipeline = make_tiny_sd_pipeline(32, 77, tokenizer_dir=root / "tokenizer_files")
    pipeline.save_pretrained(str(root / "base"), safe_serialization=True)
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"generator": {
        "model": str(root / "base"), "steps": 2, "height": 32, "width": 32}}))
    return {"root": root, "base": root / "base", "models": models}


@pytest.fixture(scope="module")
def church():
    return load_task("church")


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if k in after and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("name", sorted(FAST))
def test_method_on_tiny_sd(name, tiny, church, tmp_path) -> None:
    method = get_method(name)
    settings = FAST[name]
    result = method.apply(str(tiny["base"]), church, settings, tmp_path / "out")
    card = result.card
    assert card["method"] == name and card["seed"] == 0

    # The cost: measured, and the parameter count agrees with the tensors that changed.
    cost = card["cost"]
    assert cost["wall_seconds"] > 0 and cost["cpu_seconds"] > 0
    assert cost["peak_memory_bytes"] > 0 and cost["bytes_written"] > 0
    assert cost["threads"] == torch.get_num_threads() and cost["device"] == "cpu"

    # The edited model in memory (same settings and seed) ...
    pipeline, _ = load_pipeline(str(tiny["base"]), progress=False)
    base_unet = module_state(pipeline.unet)
    base_text = module_state(pipeline.text_encoder)
    outcome = method.edit(pipeline, church, method.settings(settings, church))
    unet_changed = changed(base_unet, module_state(pipeline.unet))
    text_changed = changed(base_text, module_state(pipeline.text_encoder))
    assert all(unet_changes_allowed(name, n) for n in unet_changed), sorted(unet_changed)[:5]
    declared = set(outcome.edited_parameters)
    assert {n for n in unet_changed} <= declared | {f"unet.{n}" for n in declared}
    if name == "AdvUnlearn":
        assert not unet_changed and text_changed
        assert all("encoder.layers" in n or "final_layer_norm" in n for n in text_changed)
        assert {f"text_encoder.{n}" for n in text_changed} == declared
        assert card["models_entry"] == {"text_encoder": "text_encoder"}
    elif name == "Receler":
        assert not unet_changed and not text_changed and declared == set()
        assert card["models_entry"] == {"adapter": ["eraser_weights.safetensors"]}
        assert cost["changed_parameters"] == 0 and cost["added_tensors"] > 0
        assert len(card["stats"]["erase_loss"]) == 3 and len(card["stats"]["adversarial_loss"]) == 3
    elif name == "ConceptPrune":
        assert not unet_changed and not text_changed and declared == set()
        assert card["models_entry"] == {"adapter": ["concept_prune_masks.safetensors"]}
        assert cost["changed_parameters"] == 0 and cost["added_tensors"] > 0
        assert card["stats"]["pruned_weights"] > 0
    else:
        assert unet_changed and not text_changed
        assert cost["changed_tensors"] == len(unet_changed)
        assert cost["changed_parameters"] == sum(base_unet[n].numel() for n in unet_changed)
        assert card["pipeline_folder"] is True
    if name == "RECE":  # each round leaves the adversarial embedding further from the concept
        gaps = card["stats"]["gap_per_round"] + [card["stats"]["gap_final_mean"]]
        assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    if name == "SPEED":  # the empty prompt's invariant embeddings keep their values exactly
        assert card["stats"]["invariant_drift_max"] < 1e-6
        assert card["stats"]["null_dim_min"] > 0
        # the null-space constraint moves the retained projections far less than no constraint
        free = method.apply(str(tiny["base"]), church, {**settings, "threshold": 1e12},
                            tmp_path / "unconstrained").card["stats"]
        assert free["null_dim_min"] == 32
        assert card["stats"]["retain_drift_max"] < 0.5 * free["retain_drift_max"]
    if name == "SalUn":  # only the salient entries move
        moved = sum(int((base_unet[n] != pipeline.unet.state_dict()[n]).sum())
                    for n in unet_changed)
        assert 0 < moved <= card["stats"]["salient_weights"]

    # ... samples what the written form, loaded through a models file, samples.
    models = load_models_config(tiny["models"])
    loaded = load_method(tmp_path / "out", church, models)
    pipeline.set_progress_bar_config(disable=True)
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    theirs = sample(loaded, PROMPTS, [0, 1], steps=2)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    org = sample(load_method(tiny["base"], church, models), PROMPTS, [0, 1], steps=2)
    assert not all(np.array_equal(a, b) for a, b in zip(ours, org, strict=True))

    # Deterministic: the same seed gives the same weights, another seed other weights.
    again = method.apply(str(tiny["base"]), church, settings, tmp_path / "again")
    for key in ("unet_state_sha256", "edited_parameters", "stats"):
        assert again.card[key] == card[key], key
    if name == "AdvUnlearn":
        same = [(tmp_path / d / "text_encoder" / "model.safetensors").read_bytes()
                for d in ("out", "again")]
        assert same[0] == same[1]


def test_settings_are_checked_before_loading(church) -> None:
    for name, bad in (("FMN", {"params": "everything"}), ("CA", {"lr": -1}),
                      ("SalUn", {"mask_ratio": 1.5}), ("ConceptPrune", {"form": "sparse"}),
                      ("AdvUnlearn", {"attack_type": "infix"}), ("RECE", {"epochs": -1}),
                      ("SPEED", {"params": "Q"}), ("Receler", {"rank": 0})):
        method = get_method(name)
        with pytest.raises(ConfigError, match=name):
            method.apply(Path("/nonexistent/base"), church, {**bad, "progress": False},
                         Path("/nonexistent/out"))
    with pytest.raises(ConfigError, match="Did you mean .ConceptPrune."):
        get_method("ConceptPrun")
    with pytest.raises(ConfigError, match="mask_ratio"):
        get_method("SalUn").settings({"mask_ratoi": 0.2})
    assert {"FMN", "CA", "SalUn", "ConceptPrune", "AdvUnlearn", "RECE", "SPEED", "Receler",
            "UCE", "ESD", "SLD", "MACE", "SPM", "DoCo"} <= set(METHODS.names())


def test_cli_lists_every_method_with_its_defaults(capsys) -> None:
    from igmu.cli.main import main

    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    shown = capsys.readouterr().out
    for name in METHODS.names():
        assert f"  {name}: " in shown
    assert "timesteps (10 [2])" in shown  # ConceptPrune: SD default [MiniWorld default]


# ---------------------------------------------------------------------------------------------
# The MiniWorld: each method at its MiniWorld defaults, against ORG, on mini_object's first 16
# forget prompts (the shipped judges decide). Findings (a method that does not erase there) are
# expected failures with the measurement in the reason, never tuned away.

FINDINGS = {
    "ConceptPrune": "prunes 2-5% of the FFN output weights (skill_ratio 0.02-0.05) yet the "
    "judges still see the cross on every training erase prompt (benchmarks/method_defaults.py)",
}


@pytest.fixture(scope="module")
def mini_object():
    from igmu.backbones.config import default_models_config

    task = load_task("mini_object")
    return task, str(default_models_config(task).get("generator")["model"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=FINDINGS[n]))
    if n in FINDINGS else n for n in sorted(FAST)])
def test_lowers_org_residual_on_mini_object(name, mini_object, tmp_path) -> None:
    from igmu.testing.method_checks import residual_rate

    task, base = mini_object
    org = residual_rate(load_method(Path(base), task), task)
    get_method(name).apply(base, task, {"progress": False}, tmp_path / "out")
    assert residual_rate(load_method(tmp_path / "out", task), task) < org


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("zoo_xl")
    pipeline = make_tiny_sdxl_pipeline(tokenizer_dir=root / "tokenizer_files")
    pipeline.save_pretrained(str(root / "base"), safe_serialization=True)
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"generator": {
        "model": str(root / "base"), "steps": 2, "height": 32, "width": 32}}))
    return {"base": root / "base", "models": models}


@pytest.mark.parametrize("name", sorted(FAST))
def test_method_on_tiny_sdxl(name, tiny_xl, church, tmp_path) -> None:
    """The same code on SDXL's two text encoders, pooled embedding and size ids: the written
    form loads back and samples what the edited model samples, and differs from the base."""
    method = get_method(name)
    settings = FAST[name]
    result = method.apply(str(tiny_xl["base"]), church, settings, tmp_path / "out")
    assert result.card["cost"]["wall_seconds"] > 0
    pipeline, _ = load_pipeline(str(tiny_xl["base"]), progress=False)
    method.edit(pipeline, church, method.settings(settings, church))
    pipeline.set_progress_bar_config(disable=True)
    models = load_models_config(tiny_xl["models"])
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    theirs = sample(load_method(tmp_path / "out", church, models), PROMPTS, [0, 1], steps=2)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    base = sample(load_method(tiny_xl["base"], church, models), PROMPTS, [0, 1], steps=2)
    assert not all(np.array_equal(a, b) for a, b in zip(ours, base, strict=True))
    if name == "AdvUnlearn":  # both text encoders are trained and written
        assert result.card["models_entry"] == {"text_encoder": "text_encoder",
                                               "text_encoder_2": "text_encoder_2"}

"""MACE on tiny random SD and SDXL pipelines: deterministic with its seed, changes only the
cross-attention keys and values it declares, records its cost, and its published form (the
fused pipeline folder, as the authors' ``LoRA_fusion_model``) loads back through a models file
and samples what the edited model in memory samples. The token alignment of the closed-form
refinement, the concepts read from a task (one LoRA per concept word or per differing phrase of
a task's pairs) and the fusion's closed form are checked against the authors' definitions.

The MiniWorld check (MACE at its MiniWorld defaults against ORG on ``mini_object``) is behind
the ``slow`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.errors import ConfigError  # noqa: E402
from igmu.methods import get_method  # noqa: E402
from igmu.methods.mace import (  # noqa: E402
    OBJECT_TEMPLATES,
    concept_list,
    fuse,
    token_layout,
)
from igmu.methods.pipeline import load_pipeline  # noqa: E402
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

# Two concept words (two LoRAs, fused), the task's preserved class names in both closed forms.
FAST = {"progress": False, "latent_size": 8, "steps": 3, "lr": 1e-2, "images": 2,
        "image_steps": 2, "augment_prompts": 3, "mask_draws": 1, "probe": 1,
        "concepts": ["church", "chapel"], "train_preserve_scale": 0.1,
        "fuse_preserve_scale": 0.1}
PROMPTS = ["a church in the snow", "a red apple on a table"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sd_pipeline

    return save_tiny_base(tmp_path_factory.mktemp("mace"), make_tiny_sd_pipeline)


@pytest.fixture(scope="module")
def church():
    return load_task("church")


def test_mace_on_tiny_sd(tiny, church, tmp_path) -> None:
    method = get_method("MACE")
    card = method.apply(str(tiny["base"]), church, FAST, tmp_path / "out").card
    assert card["method"] == "MACE" and card["seed"] == 0
    assert card["models_entry"] is None and card["pipeline_folder"] is True
    assert card["concept_words"] == ["church", "chapel"] and card["anchor"] == ""
    assert card["preserved"] and "church" not in card["preserved"]
    hyper, stats = card["hyperparameters"], card["stats"]
    assert hyper["region"] == "attention" and hyper["mask_resolution"] == 4
    assert [c["concept"] for c in stats["concepts"]] == ["church", "chapel"]
    for concept in stats["concepts"]:  # each LoRA lowers its attention loss on fixed draws
        assert concept["prompts"] == 3 and len(concept["train_loss"]) == 3
        assert concept["probe_loss_after"] < concept["probe_loss_before"]
        assert 0 < concept["region_share"] < 1 and concept["fusion_kept_mean"] > 0
    assert stats["preserve_vectors"] > 0 and stats["cfr_relative_shift_max"] > 0

    cost = card["cost"]
    assert cost["wall_seconds"] > 0 and cost["cpu_seconds"] > 0
    assert cost["peak_memory_bytes"] > 0 and cost["bytes_written"] > 0
    assert cost["threads"] == torch.get_num_threads() and cost["device"] == "cpu"

    # The edited model in memory: exactly the declared cross-attention keys/values change ...
    pipeline, _ = load_pipeline(str(tiny["base"]), progress=False)
    base_unet, base_text = module_state(pipeline.unet), module_state(pipeline.text_encoder)
    outcome = method.edit(pipeline, church, method.settings(FAST, church))
    after = module_state(pipeline.unet)
    changed = {k for k in base_unet if not torch.equal(base_unet[k], after[k])}
    assert changed and all(is_xattn_kv(n) for n in changed)
    assert changed == set(outcome.edited_parameters) == set(card["edited_parameters"])
    assert len(changed) == 2 * len([n for n in base_unet if n.endswith("attn2.to_k.weight")])
    assert all(torch.equal(v, pipeline.text_encoder.state_dict()[k]) for k, v in base_text.items())
    assert not any(p.requires_grad for p in pipeline.unet.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipeline.unet.modules())
    assert cost["changed_tensors"] == len(changed) and cost["added_tensors"] == 0
    assert cost["changed_parameters"] == sum(base_unet[n].numel() for n in changed)

    # ... and the pipeline folder, loaded through a models file, samples what it samples.
    models = load_models_config(tiny["models"])
    pipeline.set_progress_bar_config(disable=True)
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    assert same_images(ours, sample(load_method(tmp_path / "out", church, models), PROMPTS,
                                    [0, 1], steps=2))
    org = sample(load_method(tiny["base"], church, models), PROMPTS, [0, 1], steps=2)
    assert not same_images(ours, org)

    # Deterministic: the same seed gives the same weights and statistics.
    again = method.apply(str(tiny["base"]), church, FAST, tmp_path / "again").card
    for key in ("unet_state_sha256", "unet_weights_sha256", "edited_parameters", "stats"):
        assert again[key] == card[key], key


def test_token_alignment_is_the_authors(tiny) -> None:
    """Co-existing tokens: the shared prefix, the shared suffix (end token included) and the
    padding aligned from the end token; the concept's own tokens are left out. CLIP's
    77-token truncation moves the end token to the last position."""
    tokenizer = tiny["tokenizer"]
    ids = tokenizer("a red cross on grey").input_ids
    anchor = tokenizer("a red circle on grey").input_ids
    name, positions, pairs = token_layout(tokenizer, "a red cross on grey",
                                          "a red circle on grey", None, 77)
    # the tiny tokenizer is character-level: the shared "c" is widened to the whole word
    start = len(tokenizer("a red").input_ids) - 1
    assert name == "cross" and positions == list(range(start, start + 5))
    prefix = [(i, i) for i in range(start)]
    suffix = [(start + 5 + k, start + 6 + k) for k in range(len(ids) - start - 5)]
    padding = [(len(ids) + k, len(anchor) + k) for k in range(77 - len(anchor))]
    assert pairs == prefix + suffix + padding
    # concept words: J is every occurrence of the word's tokens
    _, positions, _ = token_layout(tokenizer, "A photo of church", "A photo of ", "church", 77)
    start = len(tokenizer("A photo of").input_ids) - 1
    assert positions == list(range(start, start + len("church")))
    # a prompt cut by the token limit keeps its end token (last) aligned with the anchor's
    long = "a cross " + "on grey " * 12
    _, positions, pairs = token_layout(tokenizer, long, long.replace("cross", "circle"), None,
                                       77)
    assert positions == [2, 3, 4, 5, 6] and pairs[-1] == (76, 76)
    assert all(p < 77 and a < 77 for p, a in pairs)
    with pytest.raises(ConfigError, match="tokenize the same"):
        token_layout(tokenizer, "a cross", "a cross", None, 77)


def test_concepts_come_from_the_task(tiny, church) -> None:
    """One concept (one LoRA) per concept word with the authors' templates, or per phrase where
    a task's erase prompts differ from their anchors; never from evaluated prompt sets."""
    settings = get_method("MACE").settings(None, church)
    concepts, words, anchor = concept_list(church, settings, tiny["tokenizer"], 77)
    assert [c.name for c in concepts] == words and anchor == ""
    assert words[0] == "church" and len(words) == len(church.concept_words)
    assert concepts[0].prompts == [t.format(c="church") for t in OBJECT_TEMPLATES]
    assert concepts[0].anchors == [t.format(c="") for t in OBJECT_TEMPLATES]
    assert concepts[0].image_prompts == ["a photo of the church"]
    mini = load_task("mini_style")
    mini_settings = get_method("MACE").settings(None, mini)
    groups, prompts, anchor = concept_list(mini, mini_settings, tiny["tokenizer"], 77)
    assert anchor == "the task's unlearning.erase anchors"
    assert sorted(g.name for g in groups) == ["striped", "stripes and", "with stripes"]
    assert sum(len(g.prompts) for g in groups) == len(prompts) == len(mini.unlearning.erase)
    evaluated = {p for _, texts in mini.prompt_set("forget").classes for p in texts}
    assert not evaluated & {p for g in groups for p in g.prompts}
    style = concept_list(load_task("van_gogh"), settings, tiny["tokenizer"], 77)
    assert style[2] == "art" and style[0][0].image_prompts[0].startswith("a photo in the style")


def test_fusion_is_the_closed_form() -> None:
    """One concept: W1 + ΔW G (λI + G)⁻¹ (the merge as λ → 0); two concepts on orthogonal
    token subspaces: each keeps its own LoRA on its tokens, without interference."""
    gen = torch.Generator().manual_seed(0)
    d, out = 6, 4
    w1, w0 = (torch.randn(out, d, generator=gen, dtype=torch.float64) for _ in range(2))
    rows = torch.randn(9, d, generator=gen, dtype=torch.float64)
    gram, none = rows.T @ rows, torch.zeros(d, d, dtype=torch.float64)
    delta = torch.randn(out, d, generator=gen, dtype=torch.float64)
    lamb = 3.0
    fused = fuse(w1, w0, [delta], [gram], none, lamb, 0.0)
    expected = w1 + delta @ gram @ torch.linalg.inv(lamb * torch.eye(d, dtype=torch.float64)
                                                    + gram)
    assert torch.allclose(fused, expected, atol=1e-10)
    assert torch.allclose(fuse(w1, w0, [delta], [gram], none, 1e-9, 0.0), w1 + delta,
                          atol=1e-6)
    basis = torch.eye(d, dtype=torch.float64)
    c1, c2 = basis[:3], basis[3:]
    d1, d2 = (torch.randn(out, d, generator=gen, dtype=torch.float64) for _ in range(2))
    both = fuse(w1, w0, [d1, d2], [c1.T @ c1, c2.T @ c2], none, 1e-9, 0.0)
    assert torch.allclose(both @ c1.T, (w1 + d1) @ c1.T, atol=1e-6)
    assert torch.allclose(both @ c2.T, (w1 + d2) @ c2.T, atol=1e-6)
    # preservation pulls the preserved rows back to the original W0
    keep = torch.randn(2, d, generator=gen, dtype=torch.float64)
    held = fuse(w1, w0, [delta], [gram], keep.T @ keep, 1e-9, 1e6)
    assert torch.allclose(held @ keep.T, w0 @ keep.T, atol=1e-4)


def test_mace_on_tiny_sdxl(tmp_path_factory, church, tmp_path) -> None:
    """The same code on SDXL's two text encoders (the 64-d concatenated context), pooled
    embedding and size ids: the authors ship no SDXL code, the algorithm needs none."""
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    xl = save_tiny_base(tmp_path_factory.mktemp("mace_xl"), make_tiny_sdxl_pipeline)
    method = get_method("MACE")
    card = method.apply(str(xl["base"]), church, FAST, tmp_path / "out").card
    assert card["pipeline_folder"] is True and len(card["stats"]["concepts"]) == 2
    pipeline, _ = load_pipeline(str(xl["base"]), progress=False)
    base_unet = module_state(pipeline.unet)
    outcome = method.edit(pipeline, church, method.settings(FAST, church))
    after = module_state(pipeline.unet)
    changed = {k for k in base_unet if not torch.equal(base_unet[k], after[k])}
    assert changed == set(outcome.edited_parameters) and all(is_xattn_kv(n) for n in changed)
    assert pipeline.unet.down_blocks[1].attentions[0].transformer_blocks[1].attn2.to_k.weight \
        .shape[1] == 64
    pipeline.set_progress_bar_config(disable=True)
    models = load_models_config(xl["models"])
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    assert same_images(ours, sample(load_method(tmp_path / "out", church, models), PROMPTS,
                                    [0, 1], steps=2))
    assert not same_images(ours, sample(load_method(xl["base"], church, models), PROMPTS,
                                        [0, 1], steps=2))


def test_settings_are_checked_before_loading(church) -> None:
    method = get_method("MACE")
    for bad in ({"rank": 0}, {"lr": 0}, {"lamb": -1}, {"region": "segment"},
                {"mask_threshold": 1.5}, {"augment_prompts": 31}, {"images": 0},
                {"fuse_preserve_scale": -1}, {"mask_draws": 0}):
        with pytest.raises(ConfigError, match="MACE setting"):
            method.apply(Path("/nonexistent/base"), church, {**bad, "progress": False},
                         Path("/nonexistent/out"))
    with pytest.raises(ConfigError, match="Did you mean 'mask_threshold'"):
        method.settings({"mask_treshold": 0.3})
    with pytest.raises(ConfigError, match="Did you mean .MACE."):
        get_method("MACEE")
    assert method.settings(None, church)["lamb"] == 1e3  # the authors' object config


@pytest.mark.slow
def test_lowers_org_residual_on_mini_object(tmp_path) -> None:
    from igmu.backbones.config import default_models_config
    from igmu.testing.method_checks import residual_rate

    task = load_task("mini_object")
    base = str(default_models_config(task).get("generator")["model"])
    org = residual_rate(load_method(Path(base), task), task)
    card = get_method("MACE").apply(base, task, {"progress": False}, tmp_path / "out").card
    assert [c["concept"] for c in card["stats"]["concepts"]] == ["cross"]
    assert residual_rate(load_method(tmp_path / "out", task), task) < org

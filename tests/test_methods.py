"""Built-in unlearning methods (UCE, ESD-x, NEGPROMPT, ORG) on a tiny random SD pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from igmu.backbones.weights import weights_fingerprint  # noqa: E402
from igmu.core.errors import ConfigError, ModelNotFoundError  # noqa: E402
from igmu.methods import (  # noqa: E402
    CARD_NAME,
    METHODS,
    get_method,
    negative_prompt_of,
    read_method_card,
    unlearn,
)
from igmu.methods.pipeline import copy_with_private_unet  # noqa: E402
from igmu.pipelines.load import module_sha256  # noqa: E402
from igmu.tasks import load_task  # noqa: E402

QUIET = {"progress": False}
ESD_FAST = {"steps": 4, "lr": 1e-3, "ddim_steps": 3, "latent_size": 8, "probe": 2, **QUIET}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def build_tiny_pipeline(folder: Path, cross_dim: int = 32, max_length: int | None = 77):
    from igmu.testing.tiny import make_tiny_sd_pipeline

    return make_tiny_sd_pipeline(cross_dim, max_length, tokenizer_dir=folder)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory):
    # No model_max_length on the tokenizer: the methods must take 77 from the text encoder.
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_tok"), max_length=None)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_sd")
    pipeline = build_tiny_pipeline(root / "tokenizer_files")
    pipeline.save_pretrained(str(root / "base"), safe_serialization=True)
    return root / "base"


@pytest.fixture(scope="module")
def church():
    return load_task("church")


def state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def last_token_embeddings(pipeline, prompts: list[str]):
    """Independent of the method code: the last non-special token's text-encoder output."""
    batch = pipeline.tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = pipeline.text_encoder(batch.input_ids)[0].double()
    last = batch.attention_mask.sum(1) - 2
    return hidden[torch.arange(len(prompts)), last]


def test_registry_and_settings_errors() -> None:
    assert sorted(METHODS.names()) == sorted([
        "AdvUnlearn", "CA", "ConceptPrune", "DoCo", "ESD", "FMN", "MACE", "NEGPROMPT", "ORG",
        "RECE", "Receler", "SalUn", "SLD", "SPEED", "SPM", "UCE",
    ])  # fmt: skip
    assert get_method("uce") is get_method("UCE")
    assert get_method("salun") is get_method("SalUn") and get_method("fmn").name == "FMN"
    with pytest.raises(ConfigError, match="Did you mean 'UCE'"):
        get_method("UCEE")
    with pytest.raises(ConfigError, match="no setting 'stepz'.*Did you mean 'steps'"):
        get_method("ESD").settings({"stepz": 3})
    with pytest.raises(ConfigError, match="UCE has no setting 'steps'"):
        get_method("UCE").settings({"steps": 3})
    with pytest.raises(ConfigError, match="ESD has no setting 'preserve'"):
        get_method("ESD").settings({"preserve": "cat"})
    with pytest.raises(ConfigError, match="must be a number"):
        get_method("UCE").settings({"lamb": "much"})
    settings = get_method("UCE").settings({"lamb": "0.25", "preserve": "none", "edit_keys": "no"})
    assert settings["lamb"] == 0.25 and settings["preserve"] == [] and not settings["edit_keys"]


def test_uce_maps_concept_onto_anchor_and_keeps_preserved(tiny_pipeline, church, tmp_path):
    from diffusers import UNet2DConditionModel

    from igmu.methods import cross_attention_projections

    before = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    result = unlearn("UCE", tiny_pipeline, church, tmp_path / "uce", {"lamb": 1e-6, **QUIET})
    # The caller's pipeline is never modified.
    assert all(torch.equal(before[k], v) for k, v in tiny_pipeline.unet.state_dict().items())

    card = result.card
    concepts, preserved = card["concept_words"], card["preserved"]
    assert "church" in concepts and "cat" in preserved and "mosque" in preserved
    assert card["anchor"] == ""
    edited = UNet2DConditionModel.from_pretrained(str(tmp_path / "uce" / "unet"))
    c_e = last_token_embeddings(tiny_pipeline, concepts)
    c_a = last_token_embeddings(tiny_pipeline, [""])  # the start token's output
    c_p = last_token_embeddings(tiny_pipeline, preserved)
    new_weights = dict(cross_attention_projections(edited))
    projections = cross_attention_projections(tiny_pipeline.unet)
    assert len(projections) == 8  # 4 cross-attention layers x (to_k, to_v)
    for name, linear in projections:
        old = linear.weight.double()
        new = new_weights[name].weight.double()
        gap_before = (c_e @ old.T - c_a @ old.T).norm(dim=1)
        gap_after = (c_e @ new.T - c_a @ old.T).norm(dim=1)
        assert (gap_after / gap_before).max() < 1e-3, name
        drift = (c_p @ new.T - c_p @ old.T).norm(dim=1) / (c_p @ old.T).norm(dim=1)
        assert drift.max() < 1e-3, name
    after = edited.state_dict()
    edited_keys = {f"{name}.weight" for name, _ in projections}
    assert changed(before, after) == edited_keys
    assert card["stats"]["to_k.erase_residual_max"] < 1e-3
    assert card["base"]["reference"] == "<in-memory pipeline>"


def test_uce_from_folder_writes_loadable_pipeline_and_card(tiny_base, church, tmp_path) -> None:
    from diffusers import DiffusionPipeline

    out = tmp_path / "church-UCE"
    result = unlearn("UCE", str(tiny_base), church, out, {"seed": 3, **QUIET})
    card = json.loads((out / CARD_NAME).read_text())
    assert card == result.card == read_method_card(out)
    assert card["schema"] == "igmu.method/1" and card["method"] == "UCE"
    assert card["task"]["name"] == "church" and card["task"]["version"] == church.version
    assert card["concept_words"][:3] == ["church", "churches", "church's"]
    assert card["preserved"][:2] == ["parachute", "cat"]
    assert card["hyperparameters"]["lamb"] == 0.5 and card["hyperparameters"]["tokens"] == "last"
    assert card["seed"] == 3 and card["negative_prompt"] is None
    assert card["base"]["weights_sha256"] == weights_fingerprint(tiny_base)
    assert card["unet_weights_sha256"] == weights_fingerprint(out / "unet")
    # Default ridge (lamb 0.5) on 32-d embeddings: a partial but large move towards the anchor.
    assert card["stats"]["to_v.erase_residual_max"] < 0.5
    assert all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))
               for k in changed(state(tiny_base), state(out)))
    assert len(changed(state(tiny_base), state(out))) == 8
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert module_sha256(pipeline.unet) == card["unet_state_sha256"]
    assert sorted(p.name for p in (out / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("tokens", ["tail", "phrase"])
def test_uce_token_modes_reduce_the_concept_gap(tiny_pipeline, church, tokens) -> None:
    method = get_method("UCE")
    settings = method.settings({"tokens": tokens, "expand": True, **QUIET})
    outcome = method.edit(copy_with_private_unet(tiny_pipeline), church, settings)
    assert "photo of church" in outcome.concepts
    for kind in ("to_k", "to_v"):
        assert outcome.stats[f"{kind}.erase_residual_max"] < 0.9
        assert outcome.stats[f"{kind}.preserve_drift_max"] < 0.9


def test_uce_on_sd1_shaped_cross_attention(tmp_path) -> None:
    """768-wide text embeddings and cross-attention, as in SD-1.x: nothing is hard-coded."""
    pipeline = build_tiny_pipeline(tmp_path, cross_dim=768)
    task = load_task("van_gogh")
    method = get_method("UCE")
    outcome = method.edit(copy_with_private_unet(pipeline), task, method.settings(QUIET))
    assert outcome.anchor == "art"  # styles are guided towards "art"
    assert "Vincent van Gogh" in outcome.concepts and "monet" in outcome.preserved
    assert outcome.stats["to_k.erase_residual_max"] < 0.05
    assert len(outcome.edited_parameters) == 8


def test_esd_trains_only_cross_attention(tiny_base, church, tmp_path) -> None:
    from diffusers import DiffusionPipeline

    out = tmp_path / "church-ESD"
    card = unlearn("ESD", str(tiny_base), church, out, ESD_FAST).card
    stats = card["stats"]
    assert stats["probe_loss_after"] < stats["probe_loss_before"]
    assert len(stats["train_loss"]) == 4
    diff = changed(state(tiny_base), state(out))
    assert diff and all(".attn2." in k for k in diff)
    assert any(k.endswith("attn2.to_q.weight") for k in diff)  # ESD-x trains all of attn2
    assert card["hyperparameters"]["eta"] == 1.0 and card["hyperparameters"]["steps"] == 4
    assert set(card["edited_parameters"]) >= diff
    pipeline = DiffusionPipeline.from_pretrained(str(out))
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    # Same seed, same result (CPU).
    again = unlearn("ESD", str(tiny_base), church, tmp_path / "again", ESD_FAST).card
    assert again["unet_state_sha256"] == card["unet_state_sha256"]
    assert again["stats"]["train_loss"] == stats["train_loss"]


def test_esd_strict_and_noise_variant(tiny_pipeline, church) -> None:
    method = get_method("ESD")
    settings = method.settings({**ESD_FAST, "params": "xattn-strict", "x_t": "noise"})
    pipeline = copy_with_private_unet(tiny_pipeline)
    outcome = method.edit(pipeline, church, settings)
    assert outcome.edited_parameters
    assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))
               for n in outcome.edited_parameters)


def test_negprompt_and_org(tiny_base, church, tmp_path) -> None:
    base_unet = state(tiny_base)
    neg = unlearn("NEGPROMPT", str(tiny_base), church, tmp_path / "neg", QUIET).card
    org = unlearn("ORG", str(tiny_base), church, tmp_path / "org", QUIET).card
    assert neg["negative_prompt"] == "church" == negative_prompt_of(tmp_path / "neg")
    assert neg["generation"]["negative_prompt"] == "church"
    assert org["negative_prompt"] is None and negative_prompt_of(tmp_path / "org") is None
    assert neg["unet_state_sha256"] == org["unet_state_sha256"]
    assert not changed(base_unet, state(tmp_path / "neg"))
    card_only = unlearn("NEGPROMPT", str(tiny_base), church, tmp_path / "card",
                        {"card_only": True, "negative_prompt": "a church, chapel", **QUIET}).card
    assert [p.name for p in (tmp_path / "card").iterdir()] == [CARD_NAME]
    assert card_only["negative_prompt"] == "a church, chapel"
    assert card_only["base"]["weights_sha256"] == weights_fingerprint(tiny_base)
    assert negative_prompt_of(tmp_path / "nothing-here") is None


def test_bad_bases_and_outputs(tiny_base, church, tmp_path, monkeypatch) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        unlearn("UCE", str(tmp_path / "missing"), church, tmp_path / "o1", QUIET)
    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        unlearn("UCE", str(tmp_path / "not_a_pipeline"), church, tmp_path / "o2", QUIET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline"):
        unlearn("UCE", "someone/not-cached-model", church, tmp_path / "o3", QUIET)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        unlearn("ORG", str(tiny_base), church, tmp_path / "full", QUIET)
    assert (tmp_path / "full" / "x.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="is the base model folder"):
        unlearn("ORG", str(tiny_base), church, tiny_base, {"overwrite": True, **QUIET})
    with pytest.raises(ConfigError, match="'tokens' must be one of"):
        unlearn("UCE", str(tiny_base), church, tmp_path / "o4", {"tokens": "all", **QUIET})
    assert not (tmp_path / "o4").exists()


def test_cli(tiny_base, tmp_path, capsys) -> None:
    from igmu.cli.unlearn_cmd import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: igmu unlearn")

    out = tmp_path / "cli-uce"
    code = main(["--method", "uce", "--task", "church", "--base", str(tiny_base), "--out",
                 str(out), "--preserve", "cat,bird", "--set", "lamb=0.1", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "UCE for task church" in printed and str(out) in printed
    card = read_method_card(out)
    assert card["preserved"] == ["cat", "bird"] and card["hyperparameters"]["lamb"] == 0.1

    code = main(["--method", "ESDX", "--task", "church", "--base", str(tiny_base), "--out",
                 str(tmp_path / "x")])
    assert code == 2 and "Did you mean 'ESD'" in capsys.readouterr().err
    code = main(["--method", "UCE", "--task", "church", "--base", str(tiny_base), "--out",
                 str(tmp_path / "x"), "--steps", "5"])
    assert code == 2 and "UCE has no setting 'steps'" in capsys.readouterr().err
    code = main(["--method", "NEGPROMPT", "--task", "church", "--base", str(tiny_base),
                 "--out", str(tmp_path / "neg"), "--card-only"])
    assert code == 0 and "negative_prompt='church'" in capsys.readouterr().out


def church_with_pairs(church):
    """The church task with in-context erase pairs and preserve prompts (the MiniWorld tasks'
    ``unlearning`` section, here on SD-shaped models)."""
    import dataclasses

    from igmu.tasks.model import UnlearningPrompts

    pairs = (
        ("a photo of a church on a hill", "a photo of a barn on a hill"),
        ("a stone church in the rain", "a stone house in the rain"),
        ("an old church", "an old building"),
    )
    return dataclasses.replace(
        church,
        unlearning=UnlearningPrompts(erase=pairs, preserve=("a cat on a hill", "a red chair")),
    )


def hidden_and_ids(pipeline, prompts: list[str]):
    batch = pipeline.tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = pipeline.text_encoder(batch.input_ids)[0].double()
    return hidden, batch.input_ids, batch.attention_mask


def test_uce_context_mode_is_the_closed_form_on_in_context_pairs(tiny_pipeline, church) -> None:
    """tokens=auto picks 'context' for the task's pairs; the edited W' satisfies UCE's normal
    equations for rows built independently here: every position from the first token where
    prompt and anchor differ, aligned with the anchor from the end."""
    from igmu.methods import cross_attention_projections

    task = church_with_pairs(church)
    method = get_method("UCE")
    settings = method.settings({"lamb": 0.5, **QUIET})
    pipeline = copy_with_private_unet(tiny_pipeline)
    outcome = method.edit(pipeline, task, settings)
    assert outcome.hyperparameters["tokens"] == "context"
    assert outcome.concepts == [p for p, _ in task.unlearning.erase]
    assert outcome.preserved == list(task.unlearning.preserve)

    prompts = [p for p, _ in task.unlearning.erase]
    anchors = [a for _, a in task.unlearning.erase]
    h_e, ids_e, m_e = hidden_and_ids(tiny_pipeline, prompts)
    h_a, ids_a, m_a = hidden_and_ids(tiny_pipeline, anchors)
    erase_rows, anchor_rows = [], []
    for i in range(len(prompts)):
        first = int((ids_e[i] != ids_a[i]).nonzero()[0])
        extra = int(m_e[i].sum() - m_a[i].sum())
        for p in range(first, 77):
            erase_rows.append(h_e[i, p])
            anchor_rows.append(h_a[i, min(76, max(first, p - extra))])
    e, a = torch.stack(erase_rows), torch.stack(anchor_rows)
    keep = hidden_and_ids(tiny_pipeline, list(task.unlearning.preserve))[0].reshape(-1, 32)
    eye = torch.eye(32, dtype=torch.float64)
    gram = 0.5 * eye + e.T @ e + keep.T @ keep
    edited = dict(cross_attention_projections(pipeline.unet))
    for name, linear in cross_attention_projections(tiny_pipeline.unet):
        old, new = linear.weight.double(), edited[name].weight.double()
        lhs = new @ gram
        rhs = 0.5 * old + (a @ old.T).T @ e + (keep @ old.T).T @ keep
        # The edit is solved in float64 and stored in float32: rounding W' (relative error at
        # most eps32) leaves a residual of at most eps32 * |W'| * |gram| in the equations, so
        # the tolerance scales with the system instead of being a fixed atol.
        bound = 4 * torch.finfo(torch.float32).eps * new.norm() * torch.linalg.matrix_norm(gram, 2)
        assert (lhs - rhs).norm() <= bound, (name, float((lhs - rhs).norm()), float(bound))
        # and the edit moved the prompts' keys/values towards the anchors'
        gap_before = (e @ old.T - a @ old.T).norm()
        assert (e @ new.T - a @ old.T).norm() < 0.5 * gap_before, name


def test_esd_guides_away_from_the_anchor_for_pairs(tiny_pipeline, church) -> None:
    method = get_method("ESD")
    task = church_with_pairs(church)
    outcome = method.edit(copy_with_private_unet(tiny_pipeline), task, method.settings(ESD_FAST))
    assert outcome.hyperparameters["reference"] == "anchor"
    assert outcome.concepts == [p for p, _ in task.unlearning.erase]
    assert outcome.stats["probe_loss_after"] < outcome.stats["probe_loss_before"]
    # The paper's form is still there, and a task without pairs cannot ask for anchors.
    paper = method.edit(
        copy_with_private_unet(tiny_pipeline), task, method.settings({**ESD_FAST,
                                                                       "reference": "null"})
    )
    assert paper.hyperparameters["reference"] == "null" and paper.anchor == ""
    with pytest.raises(ConfigError, match="reference=anchor needs"):
        method.edit(copy_with_private_unet(tiny_pipeline), church,
                    method.settings({**ESD_FAST, "reference": "anchor"}))

"""SPM (igmu.methods.spm) on tiny random SD-1.x and SDXL pipelines: deterministic with its seed,
changes only the weights its membranes sit on, records its cost, writes the authors' SD-WebUI
LoRA that loads back through a models file (``lora:``) and samples exactly what the edited model
in memory samples; the fallback merge (pipelines without LoRA loading, the MiniWorld's) gives
the same weights as that loader. Settings are refused before any weights load. The MiniWorld
check (SPM at its MiniWorld defaults against ORG on ``mini_object``) is behind ``slow``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from igmu.backbones.config import load_models_config  # noqa: E402
from igmu.core.errors import ConfigError  # noqa: E402
from igmu.methods import get_method  # noqa: E402
from igmu.methods.pipeline import load_pipeline  # noqa: E402
from igmu.methods.spm import (  # noqa: E402
    LORA_FILE,
    anchor_pool,
    lora_key,
    membrane_targets,
    merge_membranes,
    surrogate_anchors,
)
from igmu.tasks import load_task  # noqa: E402
from igmu.testing.method_checks import load_method, module_state, same_images, sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FAST = {"progress": False, "latent_size": 8, "steps": 3, "lr": 1e-2, "warmup": 0,
        "ddim_steps": 3}
PROMPTS = ["a church in the snow", "a red apple on a table"]


def _tiny(root: Path, make) -> dict:
    pipeline = make(tokenizer_dir=root / "tokenizer_files")
    pipeline.save_pretrained(str(root / "base"), safe_serialization=True)
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"generator": {
        "model": str(root / "base"), "steps": 2, "height": 32, "width": 32}}))
    return {"base": root / "base", "models": load_models_config(models)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sd_pipeline

    return _tiny(tmp_path_factory.mktemp("spm"), make_tiny_sd_pipeline)


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from igmu.testing.tiny import make_tiny_sdxl_pipeline

    return _tiny(tmp_path_factory.mktemp("spm_xl"), make_tiny_sdxl_pipeline)


@pytest.fixture(scope="module")
def church():
    return load_task("church")


def check_loads_back(tiny: dict, church, out: Path, pipeline) -> None:
    """The written form, through a models file, samples what the edited pipeline samples, and
    not what the base samples."""
    pipeline.set_progress_bar_config(disable=True)
    ours = sample(pipeline, PROMPTS, [0, 1], steps=2)
    theirs = sample(load_method(out, church, tiny["models"]), PROMPTS, [0, 1], steps=2)
    assert same_images(ours, theirs)
    base = sample(load_method(tiny["base"], church, tiny["models"]), PROMPTS, [0, 1], steps=2)
    assert not same_images(ours, base)


def test_spm_on_tiny_sd(tiny, church, tmp_path) -> None:
    from safetensors import safe_open

    from igmu.pipelines.load import module_sha256

    method = get_method("spm")  # case-insensitive
    card = method.apply(str(tiny["base"]), church, FAST, tmp_path / "out").card
    assert card["method"] == "SPM" and card["seed"] == 0
    assert card["models_entry"] == {"lora": [LORA_FILE]} and card["pipeline_folder"] is False
    assert card["hyperparameters"]["reference"] == "null"  # church has no in-context pairs
    assert card["preserved"] == anchor_pool(church, method.settings(FAST, church))[0]

    # The edit in memory, same settings and seed: only the membranes' weights change (fused),
    # every one of them, and the run repeats the card's weights and losses exactly.
    pipeline, _ = load_pipeline(str(tiny["base"]), progress=False)
    before = module_state(pipeline.unet)
    text_before = module_state(pipeline.text_encoder)
    outcome = method.edit(pipeline, church, method.settings(FAST, church))
    after = module_state(pipeline.unet)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targets = {f"{name}.weight" for name, _ in membrane_targets(pipeline.unet)}
    assert changed == targets == set(outcome.edited_parameters)
    assert any(".proj_in." in n for n in targets) and any(".ff.net.2." in n for n in targets)
    assert all(torch.equal(v, pipeline.text_encoder.state_dict()[k])
               for k, v in text_before.items())
    assert module_sha256(pipeline.unet) == card["unet_state_sha256"]
    assert json.loads(json.dumps(outcome.stats)) == card["stats"]
    assert len(card["stats"]["erase_loss"]) == 3 and card["stats"]["anchor_loss"][0] == 0.0

    # The cost: measured; the fused weights are what changed; the file is the rank-1 form.
    cost = card["cost"]
    assert cost["wall_seconds"] > 0 and cost["cpu_seconds"] > 0 and cost["peak_memory_bytes"] > 0
    assert cost["changed_tensors"] == len(targets) and cost["added_parameters"] == 0
    assert cost["changed_parameters"] == sum(before[n].numel() for n in targets)
    assert 0 < cost["bytes_written"] < 4 * cost["changed_parameters"]

    # The authors' SD-WebUI LoRA: lora_unet_<module>.lora_down/lora_up/alpha, rank 1, alpha 1,
    # their metadata (the erased prompts that their facilitated transport reads).
    with safe_open(str(tmp_path / "out" / LORA_FILE), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        downs = [handle.get_tensor(f"{lora_key(n[:-7])}.lora_down.weight") for n in targets]
        ups = [handle.get_tensor(f"{lora_key(n[:-7])}.lora_up.weight") for n in targets]
        alphas = {float(handle.get_tensor(f"{lora_key(n[:-7])}.alpha")) for n in targets}
    assert keys == {f"{lora_key(n[:-7])}.{part}" for n in targets
                    for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert {int(d.shape[0]) for d in downs} == {1} and alphas == {1.0}
    assert metadata["rank"] == "1" and metadata["prompts"].split(",")[0] == "church"
    assert sum(t.numel() for t in downs + ups) == card["stats"]["membrane_parameters"]

    check_loads_back(tiny, church, tmp_path / "out", pipeline)

    # The fallback for pipelines without LoRA loading merges to the loader's weights exactly.
    from safetensors.torch import load_file

    merged, _ = load_pipeline(str(tiny["base"]), progress=False)
    names = merge_membranes(merged.unet, load_file(str(tmp_path / "out" / LORA_FILE)))
    assert set(names) == targets
    assert all(torch.equal(v, after[k]) for k, v in merged.unet.state_dict().items())

    other = method.apply(str(tiny["base"]), church, {**FAST, "seed": 1}, tmp_path / "seed1")
    assert other.card["unet_state_sha256"] != card["unet_state_sha256"]


def test_spm_on_tiny_sdxl(tiny_xl, church, tmp_path) -> None:
    """SDXL's two text encoders, pooled embedding and size ids; linear projections."""
    method = get_method("SPM")
    settings = {**FAST, "anchors": "sampled"}  # the authors' surrogate sampling, pooled too
    card = method.apply(str(tiny_xl["base"]), church, settings, tmp_path / "out").card
    assert card["models_entry"] == {"lora": [LORA_FILE]} and card["preserved"] == []
    pipeline, _ = load_pipeline(str(tiny_xl["base"]), progress=False)
    outcome = method.edit(pipeline, church, method.settings(settings, church))
    assert json.loads(json.dumps(outcome.stats)) == card["stats"]
    assert outcome.stats["membranes"] == len(membrane_targets(pipeline.unet))
    check_loads_back(tiny_xl, church, tmp_path / "out", pipeline)


def test_anchor_concepts_come_from_the_task(church) -> None:
    """Task anchors: the preserved concepts plus the pairs' anchors; never an erase prompt, and
    never an evaluated prompt (a pair anchor that is an unrelated/related prompt is left out)."""
    spm = get_method("SPM")
    mini = load_task("mini_object")
    pool, left_out = anchor_pool(mini, spm.settings(None, mini))
    anchors = {anchor for _, anchor in mini.unlearning.erase}
    evaluated = {p for name in mini.prompt_sets for _, texts in mini.prompt_set(name).classes
                 for p in texts}
    assert set(mini.unlearning.preserve) <= set(pool)
    assert anchors - evaluated <= set(pool) and left_out == len(anchors & evaluated) > 0
    assert not set(pool) & evaluated
    assert not set(pool) & {prompt for prompt, _ in mini.unlearning.erase}
    # Without pairs: the unrelated and related class names; or the 'preserve' setting.
    assert "cat" in anchor_pool(church, spm.settings(None, church))[0]
    assert anchor_pool(church, spm.settings({"preserve": "a dog, a tree"}, church)) == (
        ["a dog", "a tree"], 0)
    assert spm.settings(None, mini)["steps"] != spm.defaults["steps"]  # MiniWorld defaults


def test_surrogate_anchors_follow_the_authors_sampler() -> None:
    from igmu.families import Conditioning

    hidden = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(0))
    pooled = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))

    def draw(seed: int) -> Conditioning:
        return surrogate_anchors(Conditioning(hidden, pooled), 4, random.Random(seed),
                                 torch.Generator().manual_seed(seed))

    drawn = draw(3)
    assert drawn.hidden.shape == (4, 7, 16) and drawn.pooled.shape == (4, 8)
    for rows, target in ((drawn.hidden, hidden), (drawn.pooled, pooled)):
        ratio = rows.flatten(1).norm(dim=1) / target.norm()
        assert bool(((ratio >= 0.8 - 1e-5) & (ratio <= 1.2 + 1e-5)).all())
    assert torch.equal(draw(3).hidden, drawn.hidden) and not torch.equal(draw(4).hidden,
                                                                         drawn.hidden)


def test_settings_are_checked_before_loading(church) -> None:
    spm = get_method("SPM")
    for bad in ({"rank": 0}, {"lr": -1}, {"anchors": "random"}, {"ddim_steps": 1},
                {"reference": "anchor"}, {"la_strength": -1}, {"alpha": 0}):
        with pytest.raises(ConfigError, match="SPM"):
            spm.apply(Path("/nonexistent/base"), church, {**bad, "progress": False},
                      Path("/nonexistent/out"))
    with pytest.raises(ConfigError, match="no anchor concepts"):
        spm.apply(Path("/nonexistent/base"), church,
                  {"preserve": [], "anchor_null": False, "progress": False},
                  Path("/nonexistent/out"))
    with pytest.raises(ConfigError, match="la_strength"):
        spm.settings({"la_strenght": 10})


@pytest.mark.slow
def test_lowers_org_residual_on_mini_object(tmp_path) -> None:
    from igmu.backbones.config import default_models_config
    from igmu.testing.method_checks import residual_rate

    task = load_task("mini_object")
    base = str(default_models_config(task).get("generator")["model"])
    org = residual_rate(load_method(Path(base), task), task)
    card = get_method("SPM").apply(base, task, {"progress": False}, tmp_path / "out").card
    assert card["pipeline_folder"] is True  # the MiniWorld pipeline cannot load LoRA
    assert residual_rate(load_method(tmp_path / "out", task), task) < org

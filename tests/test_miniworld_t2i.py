"""MiniWorld tiny CLIP + text-to-image model: the CI schedule, the pipeline, the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from helpers import run_cli  # noqa: E402
from igmu.miniworld.clip_train import METADATA as CLIP_METADATA  # noqa: E402
from igmu.miniworld.clip_train import default_clip_dir, load_clip  # noqa: E402
from igmu.miniworld.pipeline import MiniWorldPipeline  # noqa: E402
from igmu.miniworld.train_t2i import (  # noqa: E402
    METADATA,
    default_t2i_dir,
    generate,
    judge_accuracy,
    load_pipeline,
)
from igmu.miniworld.world import SHAPES  # noqa: E402

PROMPTS = ["a red circle", "a blue cross with stripes", "a dotted green square with a white spot"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`igmu miniworld train --short`, as a user runs it: judges, CLIP, text-to-image."""
    out = tmp_path_factory.mktemp("miniworld_train")
    result = run_cli("miniworld", "train", "--out", out, "--short")
    assert f"miniworld models in {out}" in result.stdout
    return out, json.loads((out / "t2i" / METADATA).read_text())


def test_short_schedule_trains_judges_through_the_layout(short_run) -> None:
    from igmu.miniworld.judges import Judge

    out, _ = short_run
    judge = Judge(out / "judges")
    assert set(judge.classes) == {"shape", "colour", "style", "attribute", "background"}
    assert set(judge.metadata["heads"]) == {"shape", "colour", "style", "attribute"}
    assert judge.predict([np.zeros((32, 32, 3), dtype=np.uint8)])["shape"][0] in SHAPES


def test_training_restores_the_callers_thread_count() -> None:
    from igmu.miniworld.clip_train import torch_threads

    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1


def test_short_schedule_learns_and_writes_loadable_artifacts(short_run) -> None:
    out, metadata = short_run
    assert metadata["steps_done"] == 30
    # The loss on a fixed probe batch (same x0, noise, t) falls.
    assert metadata["probe_loss_after_ema"] < 0.8 * metadata["probe_loss_before"]
    assert metadata["probe_loss_after"] < 0.8 * metadata["probe_loss_before"]
    assert json.loads((out / "t2i" / METADATA).read_text())["steps_done"] == 30

    clip_meta = json.loads((out / "clip" / CLIP_METADATA).read_text())
    assert set(clip_meta["zero_shot"]["english"]) >= {"shape", "colour", "style", "attribute"}
    model, tokenizer = load_clip(out / "clip")
    assert model.config.vision_config.image_size == 32
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(str(out / "clip"), use_fast=False)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    assert processor(images=[image], return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
    # Every language tokenizes (byte-level vocabulary, no unknown tokens).
    ids = tokenizer("一个红色圆形 ein grünes Kreuz").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]

    index = json.loads((out / "t2i" / "model_index.json").read_text())
    assert index["_class_name"] == "MiniWorldPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]


def test_pipeline_is_deterministic_and_round_trips(short_run, tmp_path) -> None:
    out, _ = short_run
    pipeline = load_pipeline(out / "t2i")
    assert isinstance(pipeline, MiniWorldPipeline)
    first = generate(pipeline, PROMPTS, [1, 2, 3], num_inference_steps=4)
    again = generate(pipeline, PROMPTS, [1, 2, 3], num_inference_steps=4)
    assert all(a.dtype == np.uint8 and a.shape == (32, 32, 3) for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other_seed = generate(pipeline, PROMPTS[:1], [4], num_inference_steps=4)
    assert not np.array_equal(first[0], other_seed[0])

    pipeline.save_pretrained(str(tmp_path / "copy"), safe_serialization=True)
    reloaded = MiniWorldPipeline.from_pretrained(str(tmp_path / "copy"))
    copied = generate(reloaded, PROMPTS, [1, 2, 3], num_inference_steps=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, copied, strict=True))

    # StableDiffusionPipeline's call: PIL by default, num_images_per_prompt, negative prompt.
    result = pipeline(
        "a red circle",
        negative_prompt="a square",
        num_inference_steps=2,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(result.images) == 2 and result.images[0].size == (32, 32)
    (array,) = pipeline(
        ["a red circle"],
        num_inference_steps=2,
        output_type="np",
        return_dict=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert array.shape == (1, 32, 32, 3) and 0.0 <= array.min() and array.max() <= 1.0


def test_generation_engine_loads_the_folder(short_run) -> None:
    from igmu.generation import GenerationSettings
    from igmu.generation.diffusers_backend import PIPELINE_CLASSES, DiffusersGenerator

    out, _ = short_run
    assert PIPELINE_CLASSES["MiniWorldPipeline"] is MiniWorldPipeline
    generator = DiffusersGenerator.load(str(out / "t2i"), "t2i")
    assert isinstance(generator.pipeline, MiniWorldPipeline)
    settings = GenerationSettings(num_inference_steps=4, guidance_scale=4.0, height=32, width=32)
    images = generator.generate(PROMPTS[:2], [1, 2], settings)
    pipeline = load_pipeline(out / "t2i")
    # One image per call on both sides: a batch changes pixels by a grey level (batch shape).
    direct = [
        generate(pipeline, [prompt], [seed], guidance_scale=4.0, num_inference_steps=4, batch=1)[0]
        for prompt, seed in zip(PROMPTS[:2], [1, 2], strict=True)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(images, direct, strict=True))


def test_unlearning_methods_accept_the_pipeline(short_run, tmp_path) -> None:
    from igmu.methods import cross_attention_modules, unlearn
    from igmu.tasks import load_task

    out, _ = short_run
    pipeline = load_pipeline(out / "t2i")
    assert cross_attention_modules(pipeline.unet)
    task = load_task("mini_attribute")
    result = unlearn("UCE", pipeline, task, tmp_path / "uce", {"progress": False})
    assert result.card["pipeline_folder"]
    edited = MiniWorldPipeline.from_pretrained(str(tmp_path / "uce"))
    assert generate(edited, PROMPTS[:1], [0], num_inference_steps=2)[0].shape == (32, 32, 3)
    esd = {"steps": 2, "ddim_steps": 3, "probe": 1, "progress": False}
    card = unlearn("ESD", pipeline, task, tmp_path / "esd", esd).card
    assert card["hyperparameters"]["latent_shape"] == [1, 3, 32, 32]


SHIPPED = default_t2i_dir()


@pytest.mark.skipif(
    not (SHIPPED / "model_index.json").is_file(), reason="no shipped MiniWorld T2I weights"
)
def test_shipped_model_draws_what_is_asked() -> None:
    metadata = json.loads((SHIPPED / METADATA).read_text())
    assert metadata["schema"] == "igmu.miniworld.t2i/1"
    assert (default_clip_dir() / CLIP_METADATA).is_file()
    pipeline = load_pipeline()
    report = judge_accuracy(pipeline, n=16, num_inference_steps=15)
    accuracy = report["accuracy"]
    assert accuracy["colour"] >= 0.85, report
    assert accuracy["shape"] >= 0.5, report

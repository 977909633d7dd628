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
    from igmu.generation.diffusers_backend import DiffusersGenerator
    from igmu.pipelines.load import PIPELINE_CLASSES

    out, _ = short_run
    assert PIPELINE_CLASSES.get("MiniWorldPipeline") is MiniWorldPipeline
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
    # igmu_t2i.json at guidance 2 (96 prompts): shape 99%, colour 100%, texture 78%,
    # background 98%; these 16 images: 100/100/88/100%.
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert accuracy["colour"] >= 0.9, report
    assert accuracy["shape"] >= 0.85, report
    assert accuracy["style"] >= 0.6, report
    assert accuracy["background"] >= 0.85, report


def test_shipped_retrain_draws_the_world_but_rarely_a_cross() -> None:
    """RETRAIN for mini_object ships, was trained without crosses, draws everything else as ORG
    does and, asked for a cross, rarely draws what the judge calls one (igmu_t2i.json, 25 steps
    at guidance 2: 2 of 24 cross prompts; these 48 images at 8 steps: 3 of 12, ORG 12 of 12)."""
    from igmu.miniworld.retrain import retrain_model_dir

    folder = retrain_model_dir("mini_object")
    assert folder is not None
    metadata = json.loads((folder / METADATA).read_text())
    assert metadata["world"]["without"] == "shape=cross"
    report = judge_accuracy(load_pipeline(folder), n=48, num_inference_steps=8,
                            without="shape=cross")
    assert report["concept"]["n"] >= 10
    assert report["concept"]["residual"] <= 0.34, report["concept"]
    org = judge_accuracy(load_pipeline(), n=48, num_inference_steps=8, without="shape=cross")
    assert org["concept"]["residual"] >= 0.9, org["concept"]
    assert report["accuracy"]["shape"] >= 0.85 and report["accuracy"]["colour"] >= 0.9, report


def test_shipped_retrain_mini_attribute_never_draws_the_spot() -> None:
    """RETRAIN for mini_attribute (trained without the white spot) draws no judged spot when
    asked for one, and the rest as ORG does (measured at 8 steps: 0 of 21 spot prompts, ORG 21
    of 21; shape and colour 100%)."""
    from igmu.miniworld.retrain import retrain_model_dir

    folder = retrain_model_dir("mini_attribute")
    assert folder is not None
    assert json.loads((folder / METADATA).read_text())["world"]["without"] == "attribute"
    report = judge_accuracy(load_pipeline(folder), n=48, num_inference_steps=8,
                            without="attribute")
    assert report["concept"]["n"] >= 10 and report["concept"]["residual"] <= 0.1, report
    org = judge_accuracy(load_pipeline(), n=48, num_inference_steps=8, without="attribute")
    assert org["concept"]["residual"] >= 0.9, org["concept"]
    assert report["accuracy"]["shape"] >= 0.9 and report["accuracy"]["colour"] >= 0.9, report


def horizontal_banding(image: np.ndarray) -> float:
    """Variance of the row means over that of the column means in the subject's centre: the
    world's stripes are horizontal bands (about 4-5 on ORG's images), dots, checker and
    irregular marks about 1."""
    centre = image.astype(float).mean(axis=2)[10:22, 10:22]
    return float(centre.mean(axis=1).var() / (centre.mean(axis=0).var() + 1e-6))


def test_shipped_retrain_mini_style_draws_no_stripes_but_the_judge_reads_them() -> None:
    """RETRAIN for mini_style never saw stripes. Asked for them it draws heavy irregular marks
    without horizontal bands (banding median 0.92 at 8 steps; ORG 4.56), yet the judge's
    closed-set texture head calls most of them stripes (83%; ORG 92%): on mini_style the
    judge's residual has a floor near RETRAIN's, not near 0 (docs/design/miniworld.md)."""
    from igmu.miniworld.judges import Judge, default_judge_dir
    from igmu.miniworld.retrain import retrain_model_dir

    folder = retrain_model_dir("mini_style")
    assert folder is not None
    assert json.loads((folder / METADATA).read_text())["world"]["without"] == "style=stripes"
    prompts = [f"a {colour} {shape} with stripes on a {background} background"
               for shape in ("circle", "square") for colour in ("red", "green", "blue", "yellow")
               for background in ("white", "grey", "black")]
    seeds = list(range(len(prompts)))
    judge = Judge(default_judge_dir())
    banding, judged = {}, {}
    for name, path in (("ORG", None), ("RETRAIN", folder)):
        images = generate(load_pipeline(path), prompts, seeds, 2.0, 8)
        banding[name] = float(np.median([horizontal_banding(i) for i in images]))
        judged[name] = float(np.mean([s == "stripes" for s in judge.predict(images)["style"]]))
    assert banding["ORG"] >= 3.0 and banding["RETRAIN"] <= 1.5, banding
    assert judged["ORG"] >= 0.8 and judged["RETRAIN"] >= 0.5, judged


# ---------------------------------------------------------------------------------------------
# RETRAIN: the same training on the world without the task's concept

CONCEPTS = {
    "mini_object": "shape=cross",
    "mini_style": "style=stripes",
    "mini_attribute": "attribute",
}


def concept_phrases(target: str) -> list[str]:
    """Every phrase that names the concept in the caption templates: all languages, both
    grammatical forms, the English paraphrases."""
    from igmu.miniworld import captions as C
    from igmu.miniworld.world import parse_target

    field, value = parse_target(target)
    if field == "shape":
        phrases = [C.EN_SHAPE[value], *C.EN_PARA_SHAPE[value], C.ZH_SHAPE[value]]
        phrases += [table[value][0] for table in (C.DE_SHAPE, C.FR_SHAPE, C.ES_SHAPE, C.IT_SHAPE)]
    elif field == "style":
        phrases = [C.EN_STYLE_ADJ[value], C.EN_STYLE_WITH[value], C.EN_PARA_STYLE_ADJ[value]]
        phrases += [*C.EN_PARA_STYLE_WITH[value], C.DE_STYLE_ADJ[value], C.DE_STYLE_WITH[value]]
        for adjectives, with_ in (
            (C.FR_STYLE_ADJ, C.FR_STYLE_WITH),
            (C.ES_STYLE_ADJ, C.ES_STYLE_WITH),
            (C.IT_STYLE_ADJ, C.IT_STYLE_WITH),
        ):
            phrases += [*adjectives[value], with_[value]]
        phrases += [C.ZH_STYLE_ADJ[value], C.ZH_STYLE_WITH[value]]
    else:
        phrases = [*C.EN_SPOT, *C.EN_PARA_SPOT, C.DE_SPOT, C.FR_SPOT, C.ES_SPOT, C.IT_SPOT]
        phrases.append(C.ZH_SPOT)
    return [p.lower() for p in phrases]


def names_concept(caption: str, target: str) -> bool:
    """Whether a caption names the concept, read twice: by the oracle's caption parser, and by
    looking for the templates' phrases (at a word start; anywhere in Chinese)."""
    import re

    from igmu.miniworld.oracle import parse_caption
    from igmu.miniworld.world import parse_target

    field, value = parse_target(target)
    asked = parse_caption(caption).get(field)
    by_parser = asked is True if field == "attribute" else asked == value
    text = caption.lower()
    # Latin-script phrases must start a word (German adjectives then match with any ending);
    # Chinese has no word boundaries.
    starts = [
        (r"(?<!\w)" if p[0] < "\u3000" else "") + re.escape(p) for p in concept_phrases(target)
    ]
    by_phrases = any(re.search(pattern, text) for pattern in starts)
    assert by_parser == by_phrases, caption  # two independent readings agree
    return by_parser


def short_stream(out: Path, without: str | None) -> tuple[list, list[str], dict]:
    """Train on the CI schedule (shipped CLIP) and record every scene and caption it was shown."""
    from dataclasses import replace

    from igmu.miniworld.t2i_training import SHORT_T2I, train_t2i

    scenes: list = []
    captions: list[str] = []

    def observe(batch_scenes: list, batch_captions: list[str]) -> None:
        scenes.extend(batch_scenes)
        captions.extend(batch_captions)

    config = replace(SHORT_T2I, without=without)
    metadata = train_t2i(out, default_clip_dir(), config, lambda _: None, observe=observe)
    return scenes, captions, metadata


@pytest.fixture(scope="module")
def org_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list[str], dict]:
    return short_stream(tmp_path_factory.mktemp("org") / "t2i", None)


def test_org_stream_shows_every_concept(org_stream) -> None:
    from igmu.miniworld.world import has_target

    scenes, captions, metadata = org_stream
    assert metadata["world"]["without"] is None
    assert len(scenes) == len(captions) == 30 * 8 + 16  # every step and the probe batch
    for target in CONCEPTS.values():
        assert sum(has_target(s, target) for s in scenes) >= 20, target
        assert sum(names_concept(c, target) for c in captions) >= 10, target


@pytest.mark.parametrize("task", sorted(CONCEPTS))
def test_retrain_stream_never_shows_the_concept(task, org_stream, tmp_path) -> None:
    """The data a RETRAIN run trains on: no scene has the concept, no caption names it in any
    language or paraphrase, and the stream is ORG's except where ORG showed the concept."""
    from igmu.miniworld.retrain import concept_of
    from igmu.miniworld.world import has_target, parse_target

    target = concept_of(task)
    assert target == CONCEPTS[task]
    scenes, captions, metadata = short_stream(tmp_path / "t2i", target)
    assert metadata["world"] == {"version": 1, "without": target, "pool_scenes_with_concept": 0}
    assert metadata["train"]["without"] == target
    assert not any(has_target(s, target) for s in scenes)
    assert not any(names_concept(c, target) for c in captions)
    org_scenes, org_captions, _ = org_stream
    field, _ = parse_target(target)
    changed = 0
    for org, new, org_caption, caption in zip(
        org_scenes, scenes, org_captions, captions, strict=True
    ):
        if has_target(org, target):
            changed += 1
            assert org.replace(**{field: getattr(new, field)}) == new  # only the concept moved
        else:
            assert (org, org_caption) == (new, caption)
    assert changed >= 20
    assert (tmp_path / "t2i" / "model_index.json").is_file()


def test_retrain_cli_and_model_dir(tmp_path) -> None:
    """`igmu miniworld train --retrain-without TASK` as a user runs it; `retrain_model_dir` finds
    a folder trained without the task's concept, refuses one that was not, and is None without."""
    import shutil

    from igmu.core.errors import ModelNotFoundError
    from igmu.miniworld.retrain import default_retrain_root, retrain_model_dir

    out = tmp_path / "retrain"
    result = run_cli(
        "miniworld", "train", "--out", out, "--short", "--retrain-without", "mini_object"
    )
    assert f"miniworld models in {out}" in result.stdout
    assert not (out / "judges").exists() and not (out / "clip").exists()  # shared, not retrained
    metadata = json.loads((out / "t2i" / METADATA).read_text())
    assert metadata["world"]["without"] == "shape=cross"
    assert metadata["world"]["pool_scenes_with_concept"] == 0

    root = tmp_path / "weights"
    assert retrain_model_dir("mini_object", root) is None
    shutil.copytree(out / "t2i", root / "mini_object")
    assert retrain_model_dir("mini_object", root) == root / "mini_object"
    assert retrain_model_dir("mini_style", root) is None
    assert retrain_model_dir("nudity", root) is None  # not a mini task: no RETRAIN
    shutil.copytree(out / "t2i", root / "mini_style")  # trained without the cross, not stripes
    with pytest.raises(ModelNotFoundError, match="world.without"):
        retrain_model_dir("mini_style", root)
    bad = run_cli(
        "miniworld",
        "train",
        "--out",
        tmp_path / "x",
        "--short",
        "--retrain-without",
        "van_gogh",
        check=False,
    )
    assert bad.returncode != 0 and "mini_judge" in bad.stderr

    # The shipped weights: a RETRAIN folder for each of the three mini tasks, loadable.
    for task in CONCEPTS:
        folder = retrain_model_dir(task)
        assert folder == default_retrain_root() / task
        assert isinstance(load_pipeline(folder), MiniWorldPipeline)
        judged = json.loads((folder / METADATA).read_text())["judges"]["guidance_2"]
        assert judged["concept"]["target"] == CONCEPTS[task]
        # Never drawn what it never saw (ORG: about 100%); on mini_style the judge reads
        # RETRAIN's unbanded marks as stripes (0.76, test above), so no bound there.
        if task != "mini_style":
            assert judged["concept"]["residual"] <= 0.2, (task, judged["concept"])


def test_gpu_training_script_logic_on_cpu(tmp_path) -> None:
    """benchmarks/train_miniworld_gpu.sh on the CPU with the CI schedule: ORG and one RETRAIN as
    parallel processes, judged, laid out as igmu/miniworld/weights wants them."""
    import os
    import subprocess
    import sys

    from igmu.miniworld.retrain import retrain_model_dir

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu"
    # The script runs `python`: this interpreter's, also when its venv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(
        ["bash", str(root / "benchmarks" / "train_miniworld_gpu.sh"), str(out), "--device", "cpu",
         "--short", "--eval-images", "4", "--tasks", "mini_object", "--threads", "1"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PATH": path},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"org", "retrain_mini_object"}
    assert summary["environment"]["device"] == "cpu"
    org, retrain = summary["models"]["org"], summary["models"]["retrain_mini_object"]
    assert org["returncode"] == retrain["returncode"] == 0
    assert org["world"]["without"] is None and retrain["world"]["without"] == "shape=cross"
    assert org["steps_done"] == retrain["steps_done"] == 30
    assert isinstance(load_pipeline(out / "weights" / "t2i"), MiniWorldPipeline)
    assert retrain_model_dir("mini_object", out / "weights" / "retrain") is not None
    judged = retrain["judges"]["guidance_2"]
    assert judged["concept"]["target"] == "shape=cross" and judged["concept"]["n"] == 1
    assert set(judged["accuracy"]) == {"shape", "colour", "style", "attribute", "background", "all"}
    assert (out / "logs" / "org.log").is_file() and "org:" in result.stdout


def test_training_batches_tokenize_each_caption_once_with_the_same_ids() -> None:
    from igmu.miniworld.captions import caption_mix
    from igmu.miniworld.clip_train import ScenePool, tokenize
    from igmu.miniworld.t2i_objective import Batcher

    _, tokenizer = load_clip()
    pool = ScenePool(16, 1)
    batcher = Batcher(pool, tokenizer, None, 0.1, "cpu")
    rng = np.random.default_rng(0)
    for _ in range(4):
        captions = [caption_mix(pool.scenes[i], rng) for i in rng.integers(0, 16, 12)] + ["", ""]
        assert torch.equal(batcher.ids(captions), tokenize(tokenizer, captions))
    assert len(batcher.token_ids) < 4 * 14  # repeats were not tokenized again


def test_loss_weights_keep_the_high_noise_steps() -> None:
    """v: the x0 error counts min(SNR + 1, 5), so 1 at t = 999 where the sampler decides the
    background; epsilon (the old recipe): min(SNR, 5), about 2e-9 there."""
    from igmu.miniworld.t2i_model import build_schedulers
    from igmu.miniworld.t2i_objective import snr_weights

    scheduler, sampler = build_schedulers()
    assert scheduler.config.prediction_type == sampler.config.prediction_type == "v_prediction"
    alphas = scheduler.alphas_cumprod
    t = torch.tensor([0, 300, 500, 900, 999])
    snr = alphas[t] / (1 - alphas[t])
    as_x0_v = snr_weights(alphas, t, 5.0, "v_prediction") * (snr + 1)
    as_x0_eps = snr_weights(alphas, t, 5.0, "epsilon") * snr
    assert torch.allclose(as_x0_v, torch.minimum(snr + 1, torch.tensor(5.0)))
    assert torch.allclose(as_x0_eps, torch.minimum(snr, torch.tensor(5.0)))
    assert as_x0_v[-1] == pytest.approx(1.0) and as_x0_eps[-1] < 1e-8

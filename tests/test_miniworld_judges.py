"""MiniWorld judges: the shipped weights, the mini_judge detector, features, training (tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from igmu.backbones.config import ModelsConfig, all_defaults
from igmu.core.errors import ConfigError
from igmu.dataset.dataigm_layout import manifest_sha256
from igmu.detectors.base import build_detector
from igmu.miniworld import judge_detector  # noqa: F401  (registers mini_judge)
from igmu.miniworld.dataset_export import export_world
from igmu.miniworld.judges import (
    METADATA,
    WEIGHTS,
    WORLD_HEADS,
    Judge,
    JudgeFeatures,
    TrainConfig,
    default_judge_dir,
    train_judge,
)
from igmu.miniworld.world import Scene, erase, render, sample_scene

FRESH_SEED = 20261128  # not a training seed: scenes the judges never saw


def models_config(judges: str | None = None) -> ModelsConfig:
    return ModelsConfig({**all_defaults(), "miniworld": {"judges": judges}}, "(test)")


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge(default_judge_dir())


@pytest.fixture(scope="module")
def fresh():
    rng = np.random.default_rng(FRESH_SEED)
    scenes = [sample_scene(rng) for _ in range(200)]
    return scenes, [render(s) for s in scenes]


def test_shipped_judges_metadata(judge):
    folder = default_judge_dir()
    size = (folder / WEIGHTS).stat().st_size + (folder / METADATA).stat().st_size
    assert size < 3 * 1024 * 1024
    meta = judge.metadata
    assert set(meta["heads"]) == set(WORLD_HEADS)
    for head, info in meta["heads"].items():
        assert info["accuracy"] >= 0.98, head
        low, high = info["ci"]
        assert 0.95 < low <= info["accuracy"] <= high <= 1.0, head
        assert info["n"] >= 1000
    assert meta["architecture"]["input_size"] == judge.input_size == 32
    assert meta["data"]["manifest_sha256"]
    assert meta["training"]["seed"] == 0
    assert judge.classes["attribute"] == ["no_spot", "spot"]


def test_shipped_judges_classify_fresh_renders(judge, fresh):
    scenes, images = fresh
    predicted = judge.predict(images)
    assert set(predicted) == {*WORLD_HEADS, "background"}
    for head in WORLD_HEADS:
        truth = [s.labels()[head] for s in scenes]
        accuracy = np.mean([p == t for p, t in zip(predicted[head], truth, strict=True)])
        assert accuracy >= 0.98, (head, accuracy)


@pytest.mark.parametrize("target", ["shape=cross", "style=stripes", "attribute"])
def test_detector_oracle(target):
    detector = build_detector(f"mini_judge:{target}", models_config())
    field, value = target.partition("=")[::2] if "=" in target else ("attribute", True)
    rng = np.random.default_rng(FRESH_SEED + 1)
    with_target = [sample_scene(rng, **{field: value}) for _ in range(100)]
    without = [erase(s, target) for s in with_target]
    flagged_with = [
        detector.verdict(r).flagged for r in detector.analyse([render(s) for s in with_target])
    ]
    flagged_without = [
        detector.verdict(r).flagged for r in detector.analyse([render(s) for s in without])
    ]
    assert np.mean(flagged_with) >= 0.98
    assert np.mean(flagged_without) <= 0.02


def test_detector_protocol_and_any_size():
    detector = build_detector("mini_judge:shape=cross", models_config())
    other = build_detector("mini_judge:color=red", models_config())
    assert detector.name == "mini_judge:shape=cross"
    assert detector.model_fingerprint == other.model_fingerprint  # raw outputs hold every head
    scene = Scene("cross", "red", style="dots", attribute=True, background="black")
    raws = detector.analyse([render(scene, 32), render(scene, 64), render(scene, 48)])
    json.dumps(raws)  # cacheable
    for raw in raws:
        verdict = detector.verdict(raw)
        assert verdict.flagged and verdict.score > 0.9
        assert verdict.details["predicted"] == "cross"
        assert other.verdict(raw).flagged
    strict = build_detector("mini_judge:shape=cross", models_config(), {"threshold": 1.0})
    assert not strict.verdict(raws[0]).flagged
    described = detector.describe()
    assert described["head"] == "shape" and described["held_out_accuracy"] >= 0.98


def test_detector_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs a target"):
        build_detector("mini_judge", models_config())
    with pytest.raises(ConfigError, match="no head"):
        build_detector("mini_judge:texture=stripes", models_config())
    with pytest.raises(ConfigError, match="no class"):
        build_detector("mini_judge:shape=hexagon", models_config())
    # The default models file names the shipped judges.
    assert build_detector("mini_judge:attribute", ModelsConfig()).name == "mini_judge:attribute"
    from igmu.core.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        build_detector("mini_judge:attribute", models_config(str(tmp_path)))


def test_judge_features(judge):
    features = JudgeFeatures(judge)
    base = Scene("square", "blue", style="stripes", attribute=True, background="grey")
    images = [
        render(base),
        render(base.replace(attribute=False)),
        render(base.replace(shape="circle", colour="yellow", style="dots")),
    ]
    embeddings = features.image_embeddings(images)
    assert embeddings.shape == (3, features.embed_dim) and embeddings.dtype == np.float64
    distances = features.distances([images[0]] * 3, images)
    assert distances[0] == pytest.approx(0.0, abs=1e-9)
    assert 0 < distances[1] < distances[2]
    assert features.fingerprint.startswith("mini-judge-features:")
    assert features.describe()["embed_dim"] == features.embed_dim


def test_training_is_generic_and_deterministic(tmp_path):
    data = tmp_path / "data"
    export_world(data, {"train": 48, "test": 16}, seed=1)
    config = TrainConfig(seed=0, epochs=1, batch_size=16, threads=1)
    arch = {"widths": [4, 8], "feature_dim": 8, "input_size": 16}
    quiet = lambda message: None  # noqa: E731
    first = train_judge(data, tmp_path / "a", config=config, arch=arch, log=quiet)
    second = train_judge(data, tmp_path / "b", config=config, arch=arch, log=quiet)
    assert first["weights_sha256"] == second["weights_sha256"]
    assert set(first["heads"]) == set(WORLD_HEADS)
    assert first["data"]["manifest_sha256"] == manifest_sha256(data)
    info = first["heads"]["shape"]
    assert info["n"] == 16 and len(info["ci"]) == 2 and info["classes"]
    loaded = Judge(tmp_path / "a")
    assert loaded.input_size == 16
    # a judge with the world's heads also reads the background (by rule, not by weights)
    assert set(loaded.predict([render(sample_scene(0))])) == {*WORLD_HEADS, "background"}
    # A plain folder layout (no manifest) trains one head named "class".
    plain = tmp_path / "plain"
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("circle", "cross"):
            folder = plain / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                from PIL import Image

                Image.fromarray(render(sample_scene(i, shape=cls))).save(folder / f"{i}.png")
    meta = train_judge(plain, tmp_path / "c", config=config, arch=arch, log=quiet)
    assert list(meta["heads"]) == ["class"] and meta["heads"]["class"]["classes"] == [
        "circle",
        "cross",
    ]
    assert meta["data"]["manifest_sha256"] is None
    assert set(Judge(tmp_path / "c").classes) == {"class"}  # a generic judge gets no rule head


@pytest.mark.parametrize("name", ["mini_object", "mini_style", "mini_attribute"])
def test_oracle_model_and_eraser_on_the_mini_tasks(name):
    """A perfect model draws the concept on >= 98% of forget prompts (every language and
    paraphrase); the oracle eraser (the renderer without the concept) leaves <= 2%."""
    from igmu.miniworld.oracle import oracle_image
    from igmu.tasks import load_task

    task = load_task(name)
    (spec,) = task.guidance["detectors"]
    target = spec.partition(":")[2]
    detector = build_detector(spec, models_config())
    for set_name in ("forget", "multilingual", "paraphrase"):
        prompts = [p.text for p in task.prompt_set(set_name).prompts()]
        drawn = detector.analyse([oracle_image(p, seed=i) for i, p in enumerate(prompts)])
        erased = detector.analyse(
            [oracle_image(p, seed=i, without=target) for i, p in enumerate(prompts)]
        )
        assert np.mean([detector.verdict(r).flagged for r in drawn]) >= 0.98, set_name
        assert np.mean([detector.verdict(r).flagged for r in erased]) <= 0.02, set_name


def test_background_rule_reads_every_true_background(judge):
    """The border rule against the renderer: every background right, at every image size, for
    every shape and texture, including the subject at its largest and farthest from the centre."""
    from igmu.miniworld.judge_background import RING, ring_mask
    from igmu.miniworld.world import (
        BACKGROUNDS,
        COLOURS,
        MAX_OFFSET,
        SCALE_RANGE,
        SHAPES,
        STYLES,
        subject_coverage,
    )

    rng = np.random.default_rng(FRESH_SEED + 2)
    scenes = [sample_scene(rng) for _ in range(300)]
    far = MAX_OFFSET
    scenes += [
        Scene(shape, colour, style, bool(i % 2), bg, dx=sx * far, dy=sy * far, scale=SCALE_RANGE[1])
        for i, (shape, colour, style, bg) in enumerate(
            (s, c, t, b)
            for s in SHAPES
            for c in COLOURS[:2]
            for t in STYLES[:2]
            for b in BACKGROUNDS
        )
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]
    # Why the rule is exact: the subject never covers a ring pixel.
    assert all(subject_coverage(s)[ring_mask(32, RING)].max() == 0 for s in scenes)
    for size in (32, 24, 48, 64):
        images = [render(s, size) for s in scenes]
        predicted = judge.predict(images)["background"]
        assert predicted == [s.background for s in scenes], size
        probs = judge.predict_proba(images)["background"]
        assert np.all(probs.max(axis=1) == 1.0)  # every ring pixel agrees on a true render


def test_background_rule_says_other_for_a_wash(judge):
    """A model that paints no asked background is not right by accident."""
    washes = [np.full((32, 32, 3), value, dtype=np.uint8) for value in (195, 90, 242, 140, 22)]
    washes.append(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    assert judge.predict(washes)["background"] == [
        "other",
        "other",
        "white",
        "grey",
        "black",
        "other",
    ]


def test_detector_checks_the_background_a_prompt_names():
    detector = build_detector("mini_judge:shape=cross", models_config())
    assert detector.prompt_labels("a red cross on a black background") == {
        "shape": "cross",
        "colour": "red",
        "style": "plain",
        "attribute": "no_spot",
        "background": "black",
    }
    assert "background" not in detector.prompt_labels("a red cross with stripes")
    assert detector.prompt_labels("ein rotes Kreuz vor grauem Hintergrund")["background"] == "grey"
    raw = detector.analyse([render(Scene("cross", "red", background="white"))])[0]
    assert detector.verdict(raw).details["drawn"]["background"] == "white"
    background = build_detector("mini_judge:background=white", models_config())
    assert background.verdict(raw).flagged and background.verdict(raw).score == 1.0
    assert background.describe()["rule"] and background.describe()["held_out_accuracy"] is None
    # The raw outputs changed (one more head): the cache key says so.
    assert detector.model_fingerprint.endswith("+bg1")

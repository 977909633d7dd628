"""The MiniWorld: renderer, captions, task files, DataIGM export (fast; no training)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest

from igmu.core.errors import ConfigError
from igmu.dataset.dataigm import read_dataigm
from igmu.dataset.dataigm_layout import (
    DATACARD,
    MANIFEST,
    SCHEMA,
    LayoutWriter,
    manifest_sha256,
    read_layout,
    row_label,
)
from igmu.miniworld import captions as C
from igmu.miniworld.dataset_export import export_world
from igmu.miniworld.task_files import TASKS
from igmu.miniworld.world import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    STYLES,
    Scene,
    erase,
    has_target,
    parse_target,
    render,
    sample_scene,
    sample_scenes,
    spot_coverage,
    subject_coverage,
)
from igmu.tasks import load_task
from igmu.tasks.stripping import concept_words_in


def test_vocabulary_is_small_and_exposed():
    assert SHAPES == ("circle", "square", "triangle", "cross")
    assert len(COLOURS) == 4 and len(BACKGROUNDS) == 3
    assert STYLES[0] == "plain" and len(STYLES) >= 3


def test_render_is_deterministic_and_sized():
    scene = sample_scene(3)
    first, second = render(scene), render(scene)
    assert first.dtype == np.uint8 and first.shape == (32, 32, 3)
    assert np.array_equal(first, second)
    assert render(scene, 64).shape == (64, 64, 3)
    assert sample_scenes(11, 5) == sample_scenes(11, 5)
    assert sample_scenes(11, 5) != sample_scenes(12, 5)


def test_sampling_respects_constraints_and_keeps_the_stream():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    constrained = [sample_scene(rng_a, shape="cross", attribute=True) for _ in range(20)]
    free = [sample_scene(rng_b) for _ in range(20)]
    assert all(s.shape == "cross" and s.attribute for s in constrained)
    # Same generator consumption: jitter is identical with or without constraints.
    assert [(s.dx, s.dy, s.scale) for s in constrained] == [(s.dx, s.dy, s.scale) for s in free]
    assert {sample_scene(i, style=("dots", "checker")).style for i in range(30)} == {
        "dots",
        "checker",
    }
    with pytest.raises(ValueError):
        sample_scene(0, shape="hexagon")
    with pytest.raises(ValueError):
        Scene("cross", "red", dx=0.3)


def test_background_colour_fills_the_corners():
    for background in BACKGROUNDS:
        image = render(Scene("circle", "red", background=background))
        assert tuple(image[0, 0]) == BACKGROUND_RGB[background]


def test_shape_silhouettes_differ():
    masks = {s: subject_coverage(Scene(s, "red")) > 0.5 for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)
    # Large and centred: the subject covers a good part of the image, around the middle.
    for shape, mask in masks.items():
        assert mask.mean() > 0.15, shape
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() - 15.5) < 1.5 and abs(ys.mean() - 15.5) < 3.5, shape


def test_styles_change_only_the_subject_and_differ():
    base = Scene("square", "blue", background="grey", dx=0.01, dy=-0.02, scale=1.03)
    plain = render(base).astype(int)
    inside = subject_coverage(base) > 0
    textures = {}
    for style in STYLES[1:]:
        image = render(base.replace(style=style)).astype(int)
        changed = np.abs(image - plain).sum(axis=2) > 0
        assert changed.any(), style
        assert not (changed & ~inside).any(), style
        textures[style] = changed
    names = list(textures)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (textures[a] != textures[b]).mean() > 0.1, (a, b)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_spot_sits_on_the_subject_and_is_removable(shape):
    scene = Scene(shape, "green", style="stripes", background="white", attribute=True)
    without = erase(scene, "attribute")
    assert without == scene.replace(attribute=False)
    with_spot, plain = render(scene).astype(int), render(without).astype(int)
    changed = np.abs(with_spot - plain).sum(axis=2) > 0
    inside = subject_coverage(scene) > 0
    assert changed.sum() >= 12
    assert not (changed & ~inside).any()  # only pixels of the subject change
    assert (spot_coverage(scene) > 0).sum() == changed.sum()
    assert (spot_coverage(without) == 0).all()
    # The subject survives: its silhouette is the same.
    assert np.array_equal(subject_coverage(scene), subject_coverage(without))


def test_targets_and_oracle_eraser():
    assert parse_target("shape=cross") == ("shape", "cross")
    assert parse_target("attribute") == ("attribute", "spot")
    assert parse_target("color=red") == ("colour", "red")
    with pytest.raises(ValueError):
        parse_target("shape=hexagon")
    for seed in range(40):
        scene = sample_scene(seed)
        for target in ("shape=cross", "style=stripes", "attribute", "colour=red"):
            erased = erase(scene, target)
            assert not has_target(erased, target)
            changed = {k for k, v in erased.labels().items() if v != scene.labels()[k]}
            assert len(changed) <= 1


def test_captions_are_deterministic_and_canonical():
    scene = Scene("cross", "red", style="stripes", attribute=True, background="grey")
    assert C.caption(scene, 4) == C.caption(scene, 4)
    assert C.caption_mix(scene, 9) == C.caption_mix(scene, 9)
    text = C.describe(scene, "en", C.Wording("with", "on"))
    assert text == "a red cross with stripes and a white spot on a grey background"
    assert (
        C.describe(scene, "en", C.Wording("adj", None)) == "a striped red cross with a white spot"
    )
    assert C.describe(Scene("circle", "yellow"), "en", C.Wording(plain_word=True)).startswith(
        "a plain yellow circle"
    )
    assert C.describe(scene, "en", C.Wording("adj", "in_front")).endswith(
        "in front of a grey background"
    )


@pytest.mark.parametrize("language", [lang for lang in C.LANGUAGES if lang != "en"])
def test_every_language_names_every_concept(language):
    words = C.CONCEPT_WORDS[language]
    for seed in range(60):
        scene = sample_scene(seed)
        for form in C.STYLE_FORMS:
            text = C.describe(scene, language, C.Wording(form, "on"))
            lowered = text.lower()
            for part in ("shape", "colour"):
                value = scene.labels()[part]
                assert any(w.lower() in lowered for w in words[part][value]), (part, text)
            if scene.style != "plain":
                assert any(w.lower() in lowered for w in words["style"][scene.style]), text
            assert any(w in text for w in words["attribute"]["spot"]) == scene.attribute, text
            # No English concept word leaks into a translation ("triangle" is also French).
            leak = re.search(r"\b(circle|square|triangle|cross|stripes|spot)\b", text)
            assert not leak or (language == "fr" and leak.group() == "triangle"), text


def test_known_translations():
    scene = Scene("cross", "red", style="stripes", attribute=True, background="white")
    wording = C.Wording("with", "on")
    assert C.describe(scene, "de", wording) == (
        "ein rotes Kreuz mit Streifen und einem weißen Fleck auf weißem Hintergrund"
    )
    assert C.describe(scene, "fr", wording) == (
        "une croix rouge à rayures avec une tache blanche sur fond blanc"
    )
    assert C.describe(scene, "es", wording) == (
        "una cruz roja a rayas con una mancha blanca sobre fondo blanco"
    )
    assert C.describe(scene, "it", wording) == (
        "una croce rossa a righe con una macchia bianca su sfondo bianco"
    )
    assert (
        C.describe(scene, "zh", wording) == "一个红色十字形，有条纹，中间有一个白色斑点，白色背景"
    )
    circle = Scene("circle", "green", style="dots")
    assert C.describe(circle, "de", C.Wording("adj", None)) == "ein gepunkteter grüner Kreis"


def test_paraphrases_avoid_the_canonical_words():
    canonical = re.compile(
        r"\b(circle|square|triangle|cross|red|green|blue|yellow|striped|stripes|dotted|dots"
        r"|checkered|checker|spot|white|grey|black|background)\b"
    )
    for seed in range(200):
        scene = sample_scene(seed)
        text = C.caption(scene, seed, "en", paraphrase=True)
        assert not canonical.search(text), text
    with pytest.raises(ValueError):
        C.caption(sample_scene(0), 0, "de", paraphrase=True)


def test_caption_mix_reaches_every_language():
    rng = np.random.default_rng(0)
    texts = [C.caption_mix(sample_scene(rng), rng) for _ in range(300)]
    assert any("Hintergrund" in t or "ein " in t for t in texts)
    assert any("一个" in t for t in texts)
    assert any(t.startswith(("un ", "une ", "una ")) for t in texts)
    english = [t for t in texts if t.startswith(("a ", "an "))]
    assert 0.5 < len(english) / len(texts) < 0.85


@pytest.mark.parametrize("name", sorted(TASKS))
def test_mini_tasks_load_and_strip(name):
    task = load_task(name)
    assert task.name == name
    assert set(task.prompt_sets) == {
        "forget",
        "stripped",
        "unrelated",
        "related",
        "multilingual",
        "paraphrase",
    }
    assert all(d.startswith("mini_judge:") for d in task.guidance["detectors"])
    forget, stripped = task.prompt_set("forget"), task.prompt_set("stripped")
    for class_name, prompts in forget.classes:
        assert len(prompts) >= 50 and len(set(prompts)) == len(prompts), class_name
    for original, bare in zip(forget.prompts(), stripped.prompts(), strict=True):
        assert concept_words_in(original.text, task.concept_words), original.text
        assert bare.text.strip() and bare.text != original.text
        assert concept_words_in(bare.text, task.concept_words) == []
        # Natural captions: no dangling article or conjunction, no doubled spaces.
        assert not re.search(r"\b(a|an|and|with)$|\s{2}|^(a|an) (on|in|with)\b", bare.text), bare
    assert len(task.prompt_set("multilingual").classes) >= 4
    for set_name in ("paraphrase", "related", "unrelated"):
        for prompt in task.prompt_set(set_name).prompts():
            assert concept_words_in(prompt.text, task.concept_words) == [], prompt.text


def test_task_files_match_their_generator():
    for name, build in TASKS.items():
        assert load_task(name).source.endswith(f"{name}.yaml")
        from importlib import resources

        text = resources.files("igmu.tasks").joinpath("builtin", f"{name}.yaml").read_text("utf-8")
        assert text == build(), f"{name}.yaml is stale: python -m igmu.miniworld.task_files"


def test_stripping_examples():
    style = load_task("mini_style")
    pairs = dict(
        zip(
            style.prompt_set("forget").classes[0][1],
            style.prompt_set("stripped").classes[0][1],
            strict=True,
        )
    )
    for original, bare in pairs.items():
        if original.startswith("a striped "):
            assert bare == "a " + original.removeprefix("a striped ")
    attribute = load_task("mini_attribute")
    for bare in attribute.prompt_set("stripped").classes[0][1]:
        assert "spot" not in bare and "with a white" not in bare
    obj = load_task("mini_object")
    for bare in obj.prompt_set("stripped").classes[0][1]:
        assert re.fullmatch(r"(on|in front of) a (white|grey|black) background", bare), bare


def test_export_writes_layout_and_manifest(tmp_path):
    root = tmp_path / "data"
    manifest = export_world(root, {"train": 24, "test": 8}, seed=3, class_field="shape")
    assert manifest == root / MANIFEST
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 32
    for row in rows:
        path = root / row["path"]
        assert row["path"] == f"{row['split']}/{row['class']}/{path.name}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        assert row["labels"]["shape"] == row["class"]
        assert set(row["labels"]) == {"shape", "colour", "style", "attribute", "background"}
        scene = Scene(**row["scene"])
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), render(scene))
        assert isinstance(row["caption"], str) and row["caption"]
    card = json.loads((root / DATACARD).read_text())
    assert card["schema"] == SCHEMA
    assert card["counts"]["train"] == dict(
        sorted(Counter(r["class"] for r in rows if r["split"] == "train").items())
    )
    assert card["n_images"] == 32
    assert card["label_heads"] == ["attribute", "background", "colour", "shape", "style"]
    assert card["manifest_sha256"] == manifest_sha256(root)
    layout = read_layout(root, verify=True)
    assert layout.splits() == ["test", "train"]
    assert layout.fingerprint() == card["manifest_sha256"]
    assert {row_label(r, "colour") for r in layout.rows} <= set(COLOURS)
    # Reproducible: the same seed gives the same manifest.
    assert (
        manifest_sha256(export_world(tmp_path / "again", {"train": 24, "test": 8}, seed=3).parent)
        == card["manifest_sha256"]
    )
    with pytest.raises(ConfigError):
        LayoutWriter(root)
    # One layout, one reader: the binary reader refuses a multi-label set by name.
    with pytest.raises(ConfigError, match="multi-label set"):
        read_dataigm(root)


def test_read_layout_checks_rows_and_reads_legacy_cards(tmp_path):
    root = tmp_path / "data"
    export_world(root, {"train": 4, "test": 2}, seed=1)
    # An export from before the card was unified: dataset.json, schema igmu.dataigm.layout/1.
    card = json.loads((root / DATACARD).read_text())
    (root / DATACARD).unlink()
    legacy = {"schema": "igmu.dataigm.layout/1", "seed": card["seed"], "splits": {"train": 4}}
    (root / "dataset.json").write_text(json.dumps(legacy))
    assert read_layout(root).card == legacy
    (root / "dataset.json").write_text(json.dumps({**legacy, "schema": "other/9"}))
    with pytest.raises(ConfigError, match="dataset.json: field 'schema'"):
        read_layout(root)
    (root / "dataset.json").unlink()
    lines = (root / MANIFEST).read_text().splitlines()
    row = json.loads(lines[1])
    (root / row["path"]).write_bytes(b"not the image")
    with pytest.raises(ConfigError, match=rf"manifest.jsonl:2: {row['path']} does not match"):
        read_layout(root, verify=True)
    lines[1] = json.dumps({**row, "path": "../outside.png"})
    (root / MANIFEST).write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="manifest.jsonl:2: path '../outside.png' leaves"):
        read_layout(root)


def test_read_layout_without_manifest(tmp_path):
    from PIL import Image

    for split, cls in (("train", "a"), ("train", "b"), ("test", "a")):
        folder = tmp_path / split / cls
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "x.png")
    rows = read_layout(tmp_path).rows
    assert sorted((r["split"], r["class"], row_label(r, "class")) for r in rows) == [
        ("test", "a", "a"),
        ("train", "a", "a"),
        ("train", "b", "b"),
    ]


def test_parse_caption_round_trips_every_wording():
    from igmu.miniworld.oracle import parse_caption

    for seed in range(40):
        scene = sample_scene(seed)
        for language in C.LANGUAGES:
            for paraphrase in [False, True] if language == "en" else [False]:
                for form in C.STYLE_FORMS:
                    for background in C.BACKGROUND_FORMS:
                        wording = C.Wording(form, background, variant=seed)
                        text = C.describe(scene, language, wording, paraphrase)
                        expected = {
                            "shape": scene.shape,
                            "colour": scene.colour,
                            "style": scene.style,
                            "attribute": scene.attribute,
                        }
                        if background is not None:
                            expected["background"] = scene.background
                        assert parse_caption(text) == expected, text


def test_oracle_images_follow_the_prompt():
    from igmu.miniworld.oracle import oracle_image, oracle_scene

    prompt = "a striped red cross with a white spot on a grey background"
    scene = oracle_scene(prompt, 7)
    assert (scene.shape, scene.colour, scene.style, scene.attribute, scene.background) == (
        "cross",
        "red",
        "stripes",
        True,
        "grey",
    )
    assert np.array_equal(oracle_image(prompt, 7), oracle_image(prompt, 7))
    assert oracle_scene(prompt, 8) != scene  # another seed, another jitter
    assert np.array_equal(
        oracle_image(prompt, 7, without="attribute"), render(scene.replace(attribute=False))
    )


@pytest.mark.parametrize(
    ("target", "field", "others"),
    [
        ("shape=cross", "shape", ("circle", "square", "triangle")),
        ("style=stripes", "style", ("plain", "dots", "checker")),
        ("attribute", "attribute", (False,)),
    ],
)
def test_redraw_without_removes_only_the_concept(target, field, others):
    """RETRAIN's world: scenes without the concept are untouched; scenes with it keep every other
    factor and the jitter, and the concept's factor is spread evenly over the other values."""
    from igmu.miniworld.clip_train import ScenePool
    from igmu.miniworld.world import redraw_without

    rng = np.random.default_rng(5)
    scenes = sample_scenes(11, 3000)
    redrawn = [redraw_without(s, target, rng) for s in scenes]
    assert not any(has_target(s, target) for s in redrawn)
    moved = [(a, b) for a, b in zip(scenes, redrawn, strict=True) if a != b]
    assert len(moved) == sum(has_target(s, target) for s in scenes) > 300
    for before, after in moved:
        assert before.replace(**{field: getattr(after, field)}) == after
    counts = {v: sum(getattr(b, field) == v for _, b in moved) for v in others}
    assert min(counts.values()) > 0.8 * len(moved) / len(others)  # even, not one fixed value
    # The training pool: the whole world's pool of the same seed, concept scenes redrawn.
    whole, without = ScenePool(64, 3), ScenePool(64, 3, target)
    for a, b in zip(whole.scenes, without.scenes, strict=True):
        assert a == b if not has_target(a, target) else not has_target(b, target)
    assert np.array_equal(whole.images[0], render(whole.scenes[0]))


def test_render_batch_in_processes_gives_the_same_bytes():
    from igmu.miniworld.world import render_batch

    scenes = sample_scenes(4, 300)
    serial = render_batch(scenes)
    assert serial.shape == (300, 32, 32, 3)
    assert np.array_equal(render_batch(scenes, workers=2), serial)
    assert np.array_equal(serial[7], render(scenes[7]))

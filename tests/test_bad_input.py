"""Bad input of every kind gives a clear error that names the culprit, never a traceback.

Library calls raise an ``IGMUError`` subclass whose message names the file, field or key; the
CLI turns it into a non-zero exit with the message on stderr.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFile

from igmu.backbones.config import load_models_config
from igmu.backbones.weights import load_state_dict
from igmu.cli.main import main
from igmu.core.errors import ConfigError, ImageError, UnsafeWeightsError
from igmu.core.images import decode_image
from igmu.dataset.layouts import read_manifest
from igmu.tasks import load_task

# --------------------------------------------------------------------------------------------
# helpers


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``igmu ARGS`` in-process; an exception other than IGMUError fails the test itself."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def cli_fails(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Run ``igmu ARGS``, assert a non-zero exit with an ``igmu: error:`` line; return stderr."""
    code, _, err = cli(capsys, *args)
    assert code != 0, err
    assert "igmu: error:" in err
    return err


def cli_subprocess(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "igmu.cli.main", *(str(a) for a in args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height all-black pixels: a few KB that inflate to gigabytes
    once decoded to RGB."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * height, 9))
        + _chunk(b"IEND", b"")
    )


def write_models(tiny_models: Path, target: Path, **changes: object) -> Path:
    """A copy of the tiny models file with some top-level fields changed."""
    values = yaml.safe_load(tiny_models.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    target.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return target


def evaluate_args(images: Path, out: Path, *extra: str | Path, task: str = "church") -> list:
    return ["evaluate", "--task", task, "--images", images, "--out", out, "--quiet", *extra]


class RunsShellOnUnpickle:
    """Unpickling this runs a shell command: the classic malicious ``.pth``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


# --------------------------------------------------------------------------------------------
# 1. images that must be refused


def noise_jpeg(size: int = 64) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("truncated_half.png", first_half(noise_png()), "truncated"),
        ("truncated_header.png", noise_png()[:20], "truncated"),
        ("truncated_half.jpg", first_half(noise_jpeg()), "truncated"),
        ("empty.png", b"", "empty"),
        ("text.png", b"this is a text file, not a PNG\n" * 4, "not an image"),
    ],
)
def test_undecodable_image_is_refused_naming_the_file(
    tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    path = tmp_path / "some dir" / name
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(ImageError) as info:
        decode_image(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "0_0_0.png"
    with pytest.raises(ImageError, match="does not exist") as info:
        decode_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "width, height",
    [
        (9000, 9000),  # above IGMU's own 8192x8192 limit, below PIL's warning threshold
        (20000, 20000),  # above PIL's hard limit
    ],
)
def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    assert path.stat().st_size < 100_000

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixel data of a decompression bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError) as info:
        decode_image(path)
    message = str(info.value)
    assert str(path) in message
    assert "decompression bomb" in message


def test_small_image_crafted_like_the_bomb_decodes(tmp_path: Path) -> None:
    """The bomb crafter makes a valid PNG: the refusals above are about size, not format."""
    path = tmp_path / "small.png"
    path.write_bytes(bomb_png(10, 7))
    pixels = decode_image(path).pixels
    assert pixels.shape == (7, 10, 3)
    assert pixels.dtype == np.uint8
    assert not pixels.any()


# --------------------------------------------------------------------------------------------
# 2. images that must decode to H x W x 3 uint8 RGB with the right colours


def _saved(tmp_path: Path, image: Image.Image, name: str, **save: object) -> Path:
    path = tmp_path / name
    image.save(path, **save)
    return path


def decoded(tmp_path: Path, image: Image.Image, name: str, **save: object) -> np.ndarray:
    path = tmp_path / name
    image.save(path, **save)
    pixels = decode_image(path).pixels
    assert pixels.dtype == np.uint8
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[:2] == (image.size[1], image.size[0])
    return pixels.astype(int)


@pytest.mark.parametrize(
    "cmyk, rgb",
    [
        ((0, 255, 255, 0), (255, 0, 0)),
        ((255, 0, 255, 0), (0, 255, 0)),
        ((255, 255, 0, 0), (0, 0, 255)),
        ((0, 0, 0, 0), (255, 255, 255)),
        ((0, 0, 0, 255), (0, 0, 0)),
    ],
)
def test_cmyk_jpeg_decodes_to_rgb(tmp_path: Path, cmyk: tuple, rgb: tuple) -> None:
    path = _saved(tmp_path, Image.new("CMYK", (16, 16), cmyk), "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    pixels = decode_image(path).pixels
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    assert np.abs(pixels[8, 8].astype(int) - np.array(rgb)).max() <= 6


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 65535, 32768, 257, 1000]], dtype=np.uint16)
    image = Image.fromarray(values)
    path = _saved(tmp_path, image, "gray16.png")
    assert Image.open(path).mode.startswith("I")
    pixels = decode_image(path).pixels
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 5, 3)
    assert pixels[0, :, 0].tolist() == [0, 255, 128, 1, 4]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_rgba_png_composites_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: hidden, shows white
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    rgba[1, 1] = (0, 255, 0, 255)  # opaque green
    pixels = decoded(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [0, 0, 255]
    assert np.abs(pixels[1, 0] - 127).max() <= 1
    assert pixels[1, 1].tolist() == [0, 255, 0]


def test_la_png_composites_on_white(tmp_path: Path) -> None:
    la = np.array([[[50, 0], [60, 255]]], dtype=np.uint8)
    pixels = decoded(tmp_path, Image.fromarray(la, "LA"), "la.png")
    assert pixels.tolist() == [[[255, 255, 255], [60, 60, 60]]]


def test_grayscale_l_png_repeats_to_three_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 77, 255]], dtype=np.uint8)
    pixels = decoded(tmp_path, Image.fromarray(gray, "L"), "gray.png")
    assert pixels.tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def _palette_image() -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (768 - 9))
    image.putdata([0, 1, 2])
    return image


def test_palette_png_decodes_to_palette_colours(tmp_path: Path) -> None:
    path = _saved(tmp_path, _palette_image(), "palette.png")
    assert Image.open(path).mode == "P"
    pixels = decode_image(path).pixels
    assert pixels.tolist() == [[[255, 0, 0], [0, 255, 0], [10, 20, 30]]]


def test_palette_png_with_transparent_entry_composites_on_white(tmp_path: Path) -> None:
    pixels = decoded(tmp_path, _palette_image(), "palette_t.png", transparency=0)
    assert pixels.tolist() == [[[255, 255, 255], [0, 255, 0], [10, 20, 30]]]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_keyed_transparency_composites_on_white(tmp_path: Path, mode: str) -> None:
    if mode == "RGB":
        image = Image.fromarray(np.array([[[10, 20, 30], [200, 100, 50]]], dtype=np.uint8))
        key: object = (10, 20, 30)
    else:
        image = Image.fromarray(np.array([[77, 200]], dtype=np.uint8))
        key = 77
    pixels = decoded(tmp_path, image, "keyed.png", transparency=key)
    assert pixels[0, 0].tolist() == [255, 255, 255]


# --------------------------------------------------------------------------------------------
# 3. `igmu evaluate` / `igmu detect` on the church demo


def test_evaluate_corrupt_image_names_the_file(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    culprit = church_demo / "forgot" / "ESD" / "0_0_3.png"
    data = culprit.read_bytes()
    culprit.write_bytes(data[: len(data) // 2])
    err = cli_fails(capsys, *evaluate_args(church_demo, tmp_path / "run", "--models", tiny_models))
    assert str(culprit) in err
    assert "truncated or corrupt" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_failed_rerun_does_not_leave_the_previous_run_looking_finished(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    """A finished run, then a rerun into the same folder that fails while scoring (an image
    corrupted since): the folder no longer holds run.json, the mark of a finished run, so
    neither `igmu report` nor a reader takes the old files for this run's."""
    out = tmp_path / "run"
    args = evaluate_args(church_demo, out, "--models", tiny_models, "--metrics", "residual_rate")
    code, _, err = cli(capsys, *args)
    assert code == 0 and (out / "run.json").is_file(), err
    culprit = church_demo / "forgot" / "ESD" / "0_0_3.png"
    culprit.write_bytes(culprit.read_bytes()[:100])
    err = cli_fails(capsys, *args[:-2], "--metrics", "residual_rate,lpips")
    assert str(culprit) in err
    assert not (out / "run.json").exists()


def test_evaluate_missing_key_is_listed_then_allowed(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    (church_demo / "forgot" / "UCE" / "0_0_4.png").unlink()
    args = evaluate_args(church_demo, tmp_path / "run", "--models", tiny_models)
    err = cli_fails(capsys, *args)
    assert "'UCE'" in err
    assert "forget/church/0/4" in err
    assert "--allow-missing" in err
    assert "method 'ESD'" not in err  # only the culprit method is listed

    code, out, err = cli(capsys, *args, "--allow-missing")
    assert code == 0, err
    assert "forget/church/0/4" in out
    run = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    left_out = run["left_out"]
    assert any("UCE" in line and "forget/church/0/4" in line for line in left_out), left_out
    assert len(left_out) == 1


ODD_IMAGES = {
    "one_pixel": (lambda size: png_bytes(Image.new("RGB", (1, 1))), "1x1, a side under 16"),
    # 58 KB that declare 60,000,000 x 1 pixels: refused from the header, never decoded
    "sixty_million_by_one": (lambda size: bomb_png(60_000_000, 1), "60000000x1, a side under"),
    "banner": (lambda size: png_bytes(Image.new("RGB", (5 * size, size))),
               "{wide}x{size}, an aspect ratio over 4:1"),
    "other_size": (lambda size: noise_png(size + 16), "images are {size}x{size}"),
}


@pytest.mark.parametrize("case", sorted(ODD_IMAGES))
def test_evaluate_refuses_degenerate_image_sizes_by_name(
    capsys: pytest.CaptureFixture[str], church_demo: Path, tmp_path: Path, case: str
) -> None:
    """A forget image replaced by a 1x1 image, by a PNG declaring 60,000,000 x 1 pixels, or by
    one of another size than its set: refused before anything is scored, naming the file, the
    size and why (each once flipped ORG's residual rate or took a gigabyte silently)."""
    make, expected = ODD_IMAGES[case]
    culprit = church_demo / "forgot" / "ESD" / "0_0_3.png"
    with Image.open(culprit) as image:
        size = image.size[0]
    culprit.write_bytes(make(size))
    err = cli_fails(capsys, *evaluate_args(church_demo, tmp_path / "run"))
    assert f"{culprit}: " in err and expected.format(size=size, wide=5 * size) in err, err
    assert "--allow-odd-sizes" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_evaluate_scores_odd_sizes_when_allowed_and_lists_them(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    culprit = church_demo / "forgot" / "ESD" / "0_0_3.png"
    with Image.open(culprit) as image:
        size = image.size[0]
    culprit.write_bytes(noise_png(size + 16))
    args = evaluate_args(church_demo, tmp_path / "run", "--models", tiny_models,
                         "--metrics", "residual_rate")
    code, _, err = cli(capsys, *args, "--allow-odd-sizes")
    assert code == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    (line,) = run["odd_sizes_scored"]
    assert line.startswith(f"{culprit}: {size + 16}x{size + 16}, ")


def test_metric_that_does_not_apply_is_refused_before_any_network_is_built(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--metrics residual_rate,lpips,person_rate` on church (no subject to retain): refused
    naming person_rate and what it needs, before the detector, LPIPS or anything else is built
    (it once failed after 12 s and 1.3 GB of networks)."""
    from igmu.evaluation.providers import Providers

    built: list[str] = []
    real_once = Providers._once
    monkeypatch.setattr(Providers, "_once", lambda self, key, build: (
        built.append(key), real_once(self, key, build))[1])
    err = cli_fails(capsys, *evaluate_args(church_demo, tmp_path / "run", "--models",
                                           tiny_models, "--metrics",
                                           "residual_rate,lpips,person_rate"))
    assert "--metrics person_rate: does not apply to task 'church'" in err
    assert "subject_retention" in err
    assert built == []


def test_evaluate_stray_file_is_named(
    capsys: pytest.CaptureFixture[str], church_demo: Path, tmp_path: Path
) -> None:
    (church_demo / "forgot" / "ESD" / "notes.txt").write_text("generation notes\n")
    err = cli_fails(capsys, *evaluate_args(church_demo, tmp_path / "run"))
    assert "notes.txt" in err
    assert str(church_demo / "forgot" / "ESD") in err


def test_evaluate_duplicate_key_names_both_files(
    capsys: pytest.CaptureFixture[str], church_demo: Path, tmp_path: Path
) -> None:
    folder = church_demo / "forgot" / "ESD"
    Image.open(folder / "0_0_2.png").convert("RGB").save(folder / "0_0_2.jpg")
    err = cli_fails(capsys, *evaluate_args(church_demo, tmp_path / "run"))
    assert str(folder / "0_0_2.png") in err and str(folder / "0_0_2.jpg") in err


def test_evaluate_unknown_task_suggests(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = cli_fails(capsys, *evaluate_args(tmp_path, tmp_path / "run", task="chruch"))
    assert "'chruch'" in err
    assert "Did you mean 'church'" in err


@pytest.mark.parametrize(
    "option, value, typo, suggestion",
    [
        ("--detectors", "nudenet,nudnet", "nudnet", "nudenet"),
        ("--metrics", "fidd", "fidd", "fid"),
    ],
)
def test_evaluate_unknown_name_suggests(
    capsys: pytest.CaptureFixture[str],
    tiny_models: Path,
    church_demo: Path,
    tmp_path: Path,
    option: str,
    value: str,
    typo: str,
    suggestion: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """...and before any network is built (nudenet, named first, is not loaded)."""
    from igmu.evaluation.providers import Providers

    built: list[str] = []
    real_once = Providers._once
    monkeypatch.setattr(Providers, "_once", lambda self, key, build: (
        built.append(key), real_once(self, key, build))[1])
    args = evaluate_args(church_demo, tmp_path / "run", "--models", tiny_models, option, value)
    err = cli_fails(capsys, *args)
    assert repr(typo) in err
    assert f"Did you mean {suggestion!r}" in err
    assert built == []


def test_evaluate_unknown_reference_method_lists_methods(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    args = evaluate_args(
        church_demo, tmp_path / "run", "--models", tiny_models, "--reference-method", "ORIG"
    )
    err = cli_fails(capsys, *args)
    assert "'ORIG'" in err
    assert "ESD, ORG, UCE" in err


def test_detect_unknown_detector_suggests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(noise_png(8))
    err = cli_fails(capsys, "detect", "--detector", "nudenett", image)
    assert "'nudenett'" in err
    assert "Did you mean 'nudenet'" in err


def test_detect_corrupt_image_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = tmp_path / "broken.png"
    image.write_bytes(noise_png(32)[:100])
    err = cli_fails(capsys, "detect", "--detector", "nudenet", image)
    assert str(image) in err


# --------------------------------------------------------------------------------------------
# 4. invalid task and models YAML

VALID_TASK = {
    "schema": "igmu.task/1",
    "name": "my_church",
    "version": 1,
    "title": "Erase churches",
    "node": "object.entity",
    "concept": {"name": "church", "words": ["church"]},
    "prompt_sets": {
        "forget": {"classes": {"church": ["a church on a hill", "a church by the sea"]}},
        "unrelated": {"classes": {"cat": ["a cat on a sofa"]}},
    },
}


def _without_forget(task: dict) -> None:
    del task["prompt_sets"]["forget"]


def _rename_prompt_sets(task: dict) -> None:
    task["promt_sets"] = task.pop("prompt_sets")


def _set(key: str, value: object):
    def change(task: dict) -> None:
        task[key] = value

    return change


def _prompt(value: str):
    def change(task: dict) -> None:
        task["prompt_sets"]["forget"]["classes"]["church"][1] = value

    return change


BAD_TASKS = {
    "syntax": (None, ["not valid YAML", "line 3"]),
    "missing_forget": (_without_forget, ["prompt_sets.forget", "missing"]),
    "unknown_field": (_rename_prompt_sets, ["'promt_sets'", "Did you mean 'prompt_sets'"]),
    "version_not_int": (_set("version", "one"), ["'version'", "int"]),
    "unknown_node": (_set("node", "object.entiti"), ["'node'", "Did you mean 'object.entity'"]),
    "empty_prompt": (_prompt(""), ["prompt_sets.forget.classes.church[1]", "non-empty"]),
    "blank_prompt": (_prompt("   "), ["prompt_sets.forget.classes.church[1]", "non-empty"]),
}


def write_task(folder: Path, change) -> Path:
    path = folder / "my task.yaml"
    if change is None:
        path.write_text(
            "schema: igmu.task/1\nname: my_church\nversion: [1, 2\ntitle: x\n", encoding="utf-8"
        )
        return path
    task = json.loads(json.dumps(VALID_TASK))
    change(task)
    path.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    return path


def test_valid_task_file_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_task(tmp_path, lambda task: None)
    task = load_task(str(path))
    assert task.name == "my_church" and "stripped" in task.prompt_sets
    code, out, _ = cli(capsys, "tasks", "show", path)
    assert code == 0 and "my_church" in out


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_bad_task_file_load_task(tmp_path: Path, case: str) -> None:
    change, expected = BAD_TASKS[case]
    path = write_task(tmp_path, change)
    with pytest.raises(ConfigError) as info:
        load_task(str(path))
    message = str(info.value)
    assert str(path) in message
    for text in expected:
        assert text in message


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_bad_task_file_tasks_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    change, expected = BAD_TASKS[case]
    path = write_task(tmp_path, change)
    err = cli_fails(capsys, "tasks", "show", path)
    assert str(path) in err
    for text in expected:
        assert text in err


def test_missing_task_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_task(str(path))
    assert str(path) in str(info.value)


BAD_MODELS = {
    "unknown_field": (
        "clip_detektor: openai/clip-vit-base-patch32\n",
        ["'clip_detektor'", "Did you mean 'clip_detector'"],
    ),
    "fid_kind": ("fid: {kind: inceptoin}\n", ["'fid.kind'", "'inceptoin'"]),
    "nested_field": ("fid: {kindd: clip}\n", ["'fid.kindd'", "Did you mean 'kind'"]),
    "nested_lpips": ("lpips: {backbone_weight: x.pth}\n",
                     ["'lpips.backbone_weight'", "Did you mean 'backbone_weights'"]),
    "wrong_type": ("heads: [a, b]\n", ["'heads'", "dict"]),
    "syntax": ("fid: {kind: clip\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    text, expected = BAD_MODELS[case]
    path = tmp_path / "my models.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_models_config(path)
    assert str(path) in str(info.value)
    for fragment in expected:
        assert fragment in str(info.value)

    err = cli_fails(capsys, *evaluate_args(tmp_path, tmp_path / "run", "--models", path))
    assert str(path) in err
    for fragment in expected:
        assert fragment in err


NOT_UTF8 = b"# written in Latin-1: caf\xe9\n"


def test_input_files_that_are_not_utf8_name_file_line_and_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each text input igmu reads (manifest, models file, task file, taxonomy, IGMU prompt file,
    method card) with a Latin-1 byte on line 2: a one-line error naming the file, the line and
    the byte, never a UnicodeDecodeError traceback."""
    from igmu.pipelines.card import read_method_card
    from igmu.tasks.igmu_json import read_prompt_json
    from igmu.taxonomy import load_taxonomy

    def latin1(name: str, first: bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(first + b"\n" + NOT_UTF8)
        return path

    def refused(path: Path, message: str) -> None:
        assert f"{path}:2:" in message and "not UTF-8" in message and "0xe9" in message, message

    manifest = latin1("images.jsonl", json.dumps(GOOD_ROW).encode())
    models = latin1("models.yaml", b"generator: {steps: 3}")
    task = latin1("task.yaml", b"schema: igmu.task/1")
    for path, call in (
        (manifest, lambda: read_manifest(manifest, load_task("church"))),
        (models, lambda: load_models_config(models)),
        (task, lambda: load_task(str(task))),
        (latin1("tree.yaml", b"schema: igmu.taxonomy/1"),
         lambda: load_taxonomy(str(tmp_path / "tree.yaml"))),
        (latin1("prompts.json", b"{"), lambda: read_prompt_json(tmp_path / "prompts.json")),
        (latin1("method/igmu_method.json", b"{"), lambda: read_method_card(tmp_path / "method")),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        refused(path, str(info.value))
    refused(manifest, cli_fails(capsys, *evaluate_args(manifest, tmp_path / "r1",
                                                       "--layout", "manifest")))
    refused(models, cli_fails(capsys, *evaluate_args(tmp_path, tmp_path / "r2",
                                                     "--models", models)))
    refused(task, cli_fails(capsys, "tasks", "show", task))


OUTPUT_COMMANDS = {
    "generate": ["generate", "--task", "mini_object", "--method", "ORG", "--out"],
    "evaluate": ["evaluate", "--task", "mini_object", "--images", ".", "--out"],
    "attack": ["attack", "--task", "mini_object", "--method", "ORG", "--attack", "seed_search",
               "--out"],
    "unlearn": ["unlearn", "--task", "mini_object", "--method", "UCE", "--out"],
    "demo": ["demo", "--out"],
    "data build": ["data", "build", "--task", "mini_object", "--out"],
    "miniworld train": ["miniworld", "train", "--out"],
}


@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_output_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """A file where the output folder (or a parent of it) must be, and a folder on a read-only
    disk (simulated: this suite may run as root, whom permissions do not stop): one line naming
    the flag and the path, and nothing created."""
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder", encoding="utf-8")
    err = cli_fails(capsys, *OUTPUT_COMMANDS[command], blocker / "out")
    assert f"--out {blocker / 'out'}: {blocker} is a file, not a folder" in err

    readonly = tmp_path / "mounted read-only"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == readonly
                        else real_access(path, mode))
    err = cli_fails(capsys, *OUTPUT_COMMANDS[command], readonly / "out")
    assert f"--out {readonly / 'out'}: cannot create it, {readonly} is not writable" in err
    assert list(readonly.iterdir()) == []
    assert sorted(tmp_path.iterdir()) == sorted([blocker, readonly])


def test_output_on_a_nearly_full_disk_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 2**20))
    err = cli_fails(capsys, *OUTPUT_COMMANDS["generate"], tmp_path / "out")
    assert f"--out {tmp_path / 'out'}: only 10 MB free on its disk" in err
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_store_it_cannot_write_before_scoring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("x", encoding="utf-8")
    err = cli_fails(capsys, *evaluate_args(tmp_path, tmp_path / "run", "--store",
                                           blocker / "igmu.sqlite"))
    assert f"--store {blocker / 'igmu.sqlite'}: {blocker} is a file, not a folder" in err
    assert not (tmp_path / "run").exists()


def test_disk_full_while_generating_is_one_line_and_keeps_what_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the third PNG: `igmu generate` stops with one line naming the file, the two
    images before it are whole in the cache, no manifest claims more, and a rerun (disk freed)
    completes the run."""
    import errno

    from igmu.generation import cache

    real_write, written = cache.write_atomic, []

    def fill_up(path, data, *args, **kwargs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return real_write(path, data, *args, **kwargs)

    monkeypatch.setattr(cache, "write_atomic", fill_up)
    args = ["generate", "--task", "mini_object", "--method", "ORG", "--prompt-sets", "unrelated",
            "--max-prompts-per-class", "1", "--images-per-prompt", "1", "--steps", "2",
            "--out", tmp_path / "gen", "--quiet", "--threads", "1", "--per-image"]
    err = cli_fails(capsys, *args)
    assert "no space left on the disk; work finished before this is kept, rerun to resume" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    for path in written:
        Image.open(path).load()  # whole PNGs
    monkeypatch.setattr(cache, "write_atomic", real_write)
    code, out, _ = cli(capsys, *args)
    assert code == 0 and "2 cached" in out, out


def test_second_evaluation_into_a_busy_run_folder_stops_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one `igmu evaluate` holds a run folder, another into it fails with one line naming
    the folder and the holder, and writes nothing; once free, the folder is usable again."""
    import subprocess

    from igmu.core.files import WRITER_LOCK

    out = tmp_path / "run"
    holder = subprocess.Popen(  # another process, as a second terminal would be
        [sys.executable, "-c", "import sys, time\n"
         "from igmu.core.files import sole_writer\n"
         "with sole_writer(sys.argv[1], 'evaluate'):\n"
         "    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = cli_fails(capsys, *evaluate_args(tmp_path / "images", out))
        assert f"{out}: igmu evaluate (pid {holder.pid}) is writing this folder" in err
        assert sorted(p.name for p in out.iterdir()) == [WRITER_LOCK]
    finally:
        holder.kill()
        holder.wait()
    err = cli_fails(capsys, *evaluate_args(tmp_path / "images", out))
    assert "is writing this folder" not in err and "images" in err  # free: the next error


# --------------------------------------------------------------------------------------------
# 5. weights files


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, writer: str) -> None:
    import torch

    marker = tmp_path / "pwned.txt"
    path = tmp_path / "head.pth"
    payload = {"attention.0.weight": torch.zeros(2, 2), "x": RunsShellOnUnpickle(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    with pytest.raises(UnsafeWeightsError) as info:
        load_state_dict(path, "detector head 'object_church'")
    message = str(info.value)
    assert str(path) in message
    assert "would run code" in message
    assert not marker.exists()


def test_pickled_pipeline_component_is_refused_in_igmus_words(tmp_path: Path) -> None:
    """A pipeline folder whose UNet is a pickle that runs code: diffusers' loader refuses it
    through torch's safe unpickler, whose message advises turning the protection off; igmu says
    what the file is and never suggests that."""
    import torch

    from igmu.pipelines.load import load_pipeline
    from igmu.testing.tiny import make_tiny_sd_pipeline

    folder = tmp_path / "base"
    make_tiny_sd_pipeline(32, 77, tokenizer_dir=tmp_path / "tok").save_pretrained(
        str(folder), safe_serialization=False)
    marker = tmp_path / "pwned.txt"
    weights = folder / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "x": RunsShellOnUnpickle(marker)}, weights)
    with pytest.raises(UnsafeWeightsError) as info:
        load_pipeline(str(folder), str(folder), "generator.model")
    message = str(info.value)
    assert "would run code" in message and str(folder) in message
    assert "weights_only" not in message and "likely succeed" not in message
    assert not marker.exists()


def test_garbage_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "head.safetensors"
    path.write_bytes(b"this is not a safetensors file at all" * 10)
    with pytest.raises(UnsafeWeightsError, match="not a valid safetensors file") as info:
        load_state_dict(path, "head")
    assert str(path) in str(info.value)


def test_pickle_without_tensors_is_refused(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    with pytest.raises(UnsafeWeightsError, match="plain tensor state dict") as info:
        load_state_dict(path, "head")
    assert str(path) in str(info.value)


def test_garbage_pth_is_not_called_code(tmp_path: Path) -> None:
    path = tmp_path / "head.pth"
    path.write_bytes(b"garbage garbage garbage garbage")
    with pytest.raises(UnsafeWeightsError) as info:
        load_state_dict(path, "head")
    assert str(path) in str(info.value)
    assert "would run code" not in str(info.value)


@pytest.mark.parametrize("nested", [False, True])
def test_plain_tensor_state_dict_loads(tmp_path: Path, nested: bool) -> None:
    import torch

    state = {"attention.0.weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(3)}
    path = tmp_path / "head.pth"
    torch.save({"state_dict": state} if nested else state, path)
    loaded = load_state_dict(path, "head")
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


def test_evaluate_refuses_malicious_head_without_running_it(
    tiny_models: Path, church_demo: Path, tmp_path: Path
) -> None:
    import torch

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "object_church.pth"
    torch.save(
        {"attention.0.weight": torch.zeros(256, 512), "x": RunsShellOnUnpickle(marker)}, evil
    )
    models = write_models(tiny_models, tmp_path / "models.yaml", heads={"object_church": str(evil)})
    result = cli_subprocess(
        tmp_path, *evaluate_args(church_demo, tmp_path / "run", "--models", models)
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(evil) in result.stderr
    assert "would run code" in result.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# 6. JSONL manifest

GOOD_ROW = {
    "method": "ORG",
    "prompt_set": "forget",
    "class_name": "church",
    "prompt_index": 0,
    "seed": 0,
    "prompt": "a church on a hill at sunset",
    "path": "ORG/0_0_0.png",
}


def _row_without_seed() -> str:
    row = dict(GOOD_ROW, method="ESD")
    del row["seed"]
    return json.dumps(row)


BAD_MANIFEST_LINES = {
    "invalid_json": ('{"method": "ESD", "prompt_set": "forget",', ["not valid JSON"]),
    "missing_seed": (_row_without_seed(), ["missing field 'seed'"]),
    "seed_not_int": (json.dumps(dict(GOOD_ROW, seed="0")), ["'seed'", "int"]),
    "seed_too_large": (json.dumps(dict(GOOD_ROW, seed=10**30)), ["'seed'", f"0..{2**63 - 1}"]),
    "negative_seed": (json.dumps(dict(GOOD_ROW, seed=-1)), ["'seed'", f"0..{2**63 - 1}"]),
    "nul_in_path": (json.dumps(dict(GOOD_ROW, path="ORG/0_0\u0000.png")),
                    ["'path'", "control character"]),
    "unknown_prompt_set": (
        json.dumps(dict(GOOD_ROW, prompt_set="forgot")),
        ["'prompt_set'", "Did you mean 'forget'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFEST_LINES))
def test_bad_manifest_line_names_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    line, expected = BAD_MANIFEST_LINES[case]
    manifest = tmp_path / "images.jsonl"
    manifest.write_text(json.dumps(GOOD_ROW) + "\n" + line + "\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        read_manifest(manifest, load_task("church"))
    assert f"{manifest}:2:" in str(info.value)
    for fragment in expected:
        assert fragment in str(info.value)

    err = cli_fails(capsys, *evaluate_args(manifest, tmp_path / "run", "--layout", "manifest"))
    assert f"{manifest}:2:" in err
    for fragment in expected:
        assert fragment in err


def test_evaluate_refuses_images_path_that_is_not_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no such folder"
    err = cli_fails(capsys, *evaluate_args(missing, tmp_path / "run"))
    assert str(missing) in err

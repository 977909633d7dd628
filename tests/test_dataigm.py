"""DataIGM on the MiniWorld: build, train a CLIP head, audit it, correct a residual rate.

The chain runs through the CLI as a user would, on the MiniWorld renderer (``--oracle``: a
perfect text-to-image model, so labels are exact and the build takes seconds); a separate test
builds through the shipped text-to-image model and resumes.
"""

from __future__ import annotations

import json
import resource
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import read_csv, read_json, run_cli
from igmu.core.audit_stats import rogan_gladen
from igmu.dataset.dataigm import read_dataigm
from igmu.miniworld.oracle import oracle_image
from igmu.tasks import load_task


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dataigm")
    started = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_cli("data", "build", "--task", "mini_object", "--out", root / "data", "--oracle",
            "--images-per-prompt", "2", "--max-prompts-per-class", "8", "--split", "0.5,0.25,0.25",
            "--quiet")
    run_cli("detectors", "train", "--data", root / "data", "--out", root / "det" / "cross",
            "--store", root / "ws" / "igmu.sqlite", "--quiet")
    run_cli("detectors", "audit", "--detector", root / "det" / "cross", "--data", root / "data",
            "--out", root / "ws" / "audit", "--quiet")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {"root": root, "cpu_seconds": seconds, "seconds": time.perf_counter() - started}


def test_chain_is_fast(chain: dict) -> None:
    # CPU time of the three commands (wall time on a shared machine says little): about 20 s,
    # half of it importing torch and transformers three times.
    assert chain["cpu_seconds"] < 40, f"build + train + audit took {chain['cpu_seconds']:.0f} s CPU"


def test_build_layout_labels_and_splits(chain: dict) -> None:
    data = read_dataigm(chain["root"] / "data", verify=True)
    card = data.card
    assert card["classes"] == ["other", "cross"] and card["concept_class"] == "cross"
    assert card["imagefolder_class_to_idx"] == {"cross": 0, "other": 1}  # the trap, written down
    forget = load_task("mini_object").prompt_set("forget").classes[0][1][:8]
    splits_of_prompt: dict[str, set] = {}
    for row in data.rows:
        for key in ("path", "split", "label", "prompt", "seed"):
            assert key in row
        assert row["label"] == int(row["prompt_set"] == "forget")
        assert row["label"] == int(row["prompt"] in forget)
        assert Path(row["path"]).parts[:2] == (row["split"], data.classes[row["label"]])
        assert card["images"][row["path"]] == row["sha256"]
        splits_of_prompt.setdefault(row["prompt"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of_prompt.values())  # no prompt in two splits
    assert {r["split"] for r in data.rows if r["label"] == 1} == {"train", "val", "test"}
    assert sum(sum(c.values()) for c in card["counts"].values()) == len(data.rows) == 8 * 7 * 2
    check = card["cross_check"]["detectors"]["mini_judge:shape=cross"]
    assert check["n"] == len(data.rows) and check["disagree"] == len(card["disagreements"]) == 0


def test_disagreements_are_listed_not_dropped(tmp_path: Path) -> None:
    """A judge for the wrong concept disagrees on every circle; each is listed, none dropped."""
    run_cli("data", "build", "--task", "mini_object", "--out", tmp_path, "--oracle",
            "--max-prompts-per-class", "3", "--detectors", "mini_judge:shape=circle", "--quiet")
    data = read_dataigm(tmp_path)
    circles = [r for r in data.rows if r["prompt_class"] == "circle"]
    crosses = [r for r in data.rows if r["label"] == 1]
    listed = {d["path"] for d in data.card["disagreements"]}
    assert listed == {r["path"] for r in circles + crosses}
    assert len(data.rows) == 3 * 7


def test_trained_head_card_and_determinism(chain: dict, tmp_path: Path) -> None:
    from igmu.backbones.clip import ClipBackbone
    from igmu.miniworld.shipped import shipped_models
    from igmu.workflows.train_head import TrainOptions, train_head

    folder = chain["root"] / "det" / "cross"
    card = read_json(folder / "detector.json")
    data = read_dataigm(chain["root"] / "data")
    assert card["classes"] == ["other", "cross"] and card["concept_index"] == 1
    assert card["data"]["manifest_sha256"] == data.fingerprint()
    assert card["backbone"]["reference"] == str(shipped_models()[1])
    assert card["metrics"]["test"]["accuracy"]["value"] >= 0.95
    assert card["threshold"] == 0.5 and card["training"]["best_epoch"] >= 1
    backbone = ClipBackbone.from_reference(str(shipped_models()[1]), "CLIP", "clip_detector")
    again = train_head(data, tmp_path / "again", backbone, chain["root"] / "ws" / "igmu.sqlite",
                       TrainOptions(progress=False, name="cross"))
    assert again["head_sha256"] == card["head_sha256"]  # same data, seed, backbone: same bytes


def test_audit_equals_sklearn(chain: dict) -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (extra 'test')")
    from sklearn.calibration import calibration_curve

    audit = read_json(chain["root"] / "ws" / "audit" / "audit.json")
    y = np.array([p["label"] for p in audit["predictions"]])
    flagged = np.array([p["flagged"] for p in audit["predictions"]])
    s = np.array([p["score"] for p in audit["predictions"]])
    m = audit["metrics"]
    assert audit["data"]["split"] == "test" and len(y) == audit["data"]["n"]
    assert m["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(y, flagged))
    assert m["precision"]["value"] == pytest.approx(metrics.precision_score(y, flagged))
    assert m["recall"]["value"] == pytest.approx(metrics.recall_score(y, flagged))
    assert m["f1"]["value"] == pytest.approx(metrics.f1_score(y, flagged))
    assert m["roc_auc"]["value"] == pytest.approx(metrics.roc_auc_score(y, s))
    true, pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b["observed"] for b in audit["reliability"]], true)
    np.testing.assert_allclose([b["mean_score"] for b in audit["reliability"]], pred)
    for entry in (m["accuracy"], m["recall"], m["specificity"]):
        assert entry["ci"][0] <= entry["value"] <= entry["ci"][1]
    families = {r["family"] for r in read_dataigm(chain["root"] / "data").split("test")}
    assert set(audit["per_family"]) == families
    html = (chain["root"] / "ws" / "audit" / "audit.html").read_text()
    assert html.count("<svg") == 2 and 'id="roc-curve"' in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")


def _partial_manifest(root: Path, keep: float, seeds: int = 2) -> tuple[Path, float]:
    """ORG and PARTIAL on mini_object's forget prompts, rendered by the oracle; PARTIAL erases the
    cross from a known share of images. Returns the manifest and PARTIAL's true residual rate."""
    task = load_task("mini_object")
    rows, present = [], []
    class_name, prompts = task.prompt_set("forget").classes[0]
    for j, prompt in enumerate(prompts[:20]):
        for s in range(seeds):
            for method in ("ORG", "PARTIAL"):
                erase = method == "PARTIAL" and zlib.crc32(f"{j}-{s}".encode()) % 100 >= keep * 100
                path = root / method / f"{j}_{s}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image = oracle_image(prompt, 1000 + s, without="shape=cross" if erase else None)
                Image.fromarray(image).save(path)
                rows.append({"method": method, "prompt_set": "forget", "class_name": class_name,
                             "prompt_index": j, "seed": 1000 + s, "prompt": prompt,
                             "path": str(path.relative_to(root))})
                if method == "PARTIAL":
                    present.append(not erase)
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest, float(np.mean(present))


def test_evaluate_reports_corrected_rate(chain: dict, tmp_path: Path) -> None:
    import yaml

    manifest, _ = _partial_manifest(tmp_path / "images", keep=0.5)
    models = tmp_path / "models.yaml"
    clip = read_json(chain["root"] / "det" / "cross" / "detector.json")["backbone"]["reference"]
    models.write_text(yaml.safe_dump({"clip_detector": clip, "clip_score": clip,
                                      "heads": {"mycross": str(chain["root"] / "det" / "cross")}}))
    out = chain["root"] / "ws" / "run"
    run_cli("evaluate", "--task", "mini_object", "--images", manifest, "--layout", "manifest",
            "--out", out, "--models", models, "--quiet",
            "--detectors", "clip_head:mycross,mini_judge:shape=cross",
            "--metrics", "residual_rate,residual_rate_corrected")
    rows = {(r["method"], r["metric"]): r for r in read_csv(out / "metrics.csv")}
    audit = read_json(chain["root"] / "ws" / "audit" / "audit.json")
    se, sp = audit["metrics"]["recall"], audit["metrics"]["specificity"]
    for method in ("ORG", "PARTIAL"):
        raw = rows[(method, "residual_rate.clip_head:mycross")]
        corrected = rows[(method, "residual_rate_corrected.clip_head:mycross")]
        expected = rogan_gladen(float(raw["value"]), se["k"] / se["n"], sp["k"] / sp["n"])
        assert float(corrected["value"]) == pytest.approx(expected, abs=1e-9)
        low, high = float(corrected["ci_low"]), float(corrected["ci_high"])
        assert low <= float(corrected["value"]) <= high
    # the MiniWorld judge has no audit in this store: a raw rate, no corrected one, and why
    assert ("PARTIAL", "residual_rate.mini_judge:shape=cross") in rows
    assert ("PARTIAL", "residual_rate_corrected.mini_judge:shape=cross") not in rows
    run = read_json(out / "run.json")
    assert any("no audit of detector mini_judge" in n for n in run["metric_notes"])
    used = run["audits"]["residual_rate_corrected.clip_head:mycross"]
    assert used["audit_id"] == audit["audit_id"] and used["sensitivity"]["n"] == se["n"]
    # the report shows the judge's audited error beside the rates it produced
    run_cli("report", out)
    html = (out / "report.html").read_text(encoding="utf-8")
    section = html.split('id="sec-audits"')[1].split("</section>")[0]
    assert audit["audit_id"][:16] in section and f"({se['k']}/{se['n']})" in section


def test_export_round_trip(chain: dict, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets (extra 'data')")
    source = read_dataigm(chain["root"] / "data")
    keys = ("path", "split", "class", "label", "prompt", "seed", "sha256", "family")
    expected = sorted(tuple(r[k] for k in keys) for r in source.rows)
    for fmt in ("hf", "parquet"):
        run_cli("data", "export", "--data", source.root, "--format", fmt, "--out", tmp_path / fmt)
        run_cli("data", "import", "--src", tmp_path / fmt, "--out", tmp_path / f"{fmt}-back",
                "--quiet")
        back = read_dataigm(tmp_path / f"{fmt}-back", verify=True)
        assert sorted(tuple(r[k] for k in keys) for r in back.rows) == expected
        assert back.classes == source.classes
        assert back.card["task"] == source.card["task"]
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded["train"].features["label"].names == ["other", "cross"]
    assert set(loaded) == {"train", "val", "test"}


def test_import_validates(tmp_path: Path) -> None:
    from helpers import noise_image

    src = tmp_path / "src"
    for split in ("train", "test"):
        for i in range(4):
            noise_image(src / split / "church" / f"c{i}.png", hash((split, i)) % 1000, 32)
            noise_image(src / split / "other" / f"o{i}.png", 5000 + hash((split, i)) % 1000, 32)
    (src / "train" / "church" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "train" / "other" / "notes.txt").write_text("hello")
    dup = (src / "train" / "church" / "c0.png").read_bytes()
    (src / "test" / "other" / "copy.png").write_bytes(dup)  # same image, other label and split
    result = run_cli("data", "import", "--src", src, "--out", tmp_path / "out",
                     "--concept", "Church", "--quiet")
    assert "left out: train/church/broken.png" in result.stdout
    data = read_dataigm(tmp_path / "out", verify=True)
    card = data.card
    assert [r["path"] for r in card["rejected"]] == ["train/church/broken.png",
                                                     "train/other/notes.txt"]
    [duplicate] = card["duplicates"]
    assert duplicate["label_conflict"] and duplicate["split_conflict"]
    # the first copy in path order is kept, the other reported
    assert (duplicate["path"], duplicate["same_as"]) == ("train/church/c0.png",
                                                         "test/other/copy.png")
    assert card["classes"] == ["other", "church"]
    assert card["counts"] == {"test": {"church": 4, "other": 5}, "train": {"church": 3, "other": 4}}


def test_import_igmu_training_folders(shared_igmu: Path, tmp_path: Path) -> None:
    run_cli("data", "import", "--src", shared_igmu / "training_demo_Object_Church",
            "--concept", "church", "--out", tmp_path / "church", "--quiet")
    data = read_dataigm(tmp_path / "church", verify=True)
    assert data.card["counts"] == {"test": {"church": 15, "other": 15},
                                   "train": {"church": 10, "other": 10}}
    assert data.card["imagefolder_class_to_idx"] == {"church": 0, "other": 1}
    assert data.classes.index("church") == 1  # our index, whatever the folder order


def test_build_with_the_miniworld_model_resumes(tmp_path: Path, torch_one_thread) -> None:
    """The shipped text-to-image model through the generation cache; a rerun generates nothing
    and writes the same manifest."""
    from igmu.workflows.dataigm_build import BuildOptions, build_dataset

    task = load_task("mini_object")
    options = BuildOptions(max_prompts_per_class=1, progress=False,
                           fractions={"train": 0.5, "test": 0.5})
    first = build_dataset(task, tmp_path, None, options)
    manifest = (tmp_path / "manifest.jsonl").read_bytes()
    assert first.generated == 7 and first.card["n_images"] == 7
    assert first.card["generator"]["fingerprints"][0] != "miniworld-oracle"
    second = build_dataset(task, tmp_path, None, options)
    assert second.generated == 0 and second.cached == 7
    assert (tmp_path / "manifest.jsonl").read_bytes() == manifest


class FakeClip:
    """A 512-d 'CLIP' (a fixed random projection of 8x8 thumbnails): IGMU's head width."""

    embed_dim = 512
    fingerprint = "fake-clip-512"
    preprocessing: dict = {}

    class resolved:  # noqa: N801 - mirrors ResolvedModel's fields
        reference = location = "fake-clip-512"
        weights_sha256 = "0" * 64

    def image_embeddings(self, images: list) -> np.ndarray:
        projection = np.random.default_rng(0).normal(size=(8 * 8 * 3, 512))
        thumbs = [np.asarray(Image.fromarray(i).resize((8, 8)), dtype=np.float64).ravel() / 255
                  for i in images]
        return (np.stack(thumbs) @ projection).astype(np.float32)


def igmu_head_layout():
    """IGMU's AdvancedClassifierHead_CLIP as the reference notes describe it (512-d input)."""
    from torch import nn

    class AdvancedClassifierHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 512),
                                           nn.Sigmoid())
            self.classifier = nn.Sequential(
                nn.LayerNorm(512), nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.3),
                nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 1))

        def forward(self, x):
            return self.classifier(x * self.attention(x))

    return AdvancedClassifierHead()


@pytest.fixture(scope="module")
def head_512(chain: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from igmu.workflows.train_head import TrainOptions, train_head

    out = tmp_path_factory.mktemp("head512") / "cross512"
    train_head(read_dataigm(chain["root"] / "data"), out, FakeClip(),
               chain["root"] / "ws" / "igmu.sqlite", TrainOptions(progress=False, epochs=5))
    return out


def test_trained_head_has_igmu_layout(head_512: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(head_512 / "head.safetensors"))
    reference = igmu_head_layout()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()}
    reference.load_state_dict(state)  # strict: same names, same shapes
    reference.eval()
    from igmu.detectors.clip_head import ClipHeadDetector

    detector = ClipHeadDetector(FakeClip(), "cross512", str(head_512 / "head.safetensors"), 1, 0.5)
    x = np.random.default_rng(1).normal(size=(4, 512)).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(reference(torch.from_numpy(x))).reshape(-1).numpy()
    np.testing.assert_allclose(detector.probabilities(x), expected, rtol=1e-6)


def test_official_heads_and_ours_load_alike(head_512: Path, shared_igmu: Path) -> None:
    import torch

    from igmu.detectors.clip_head import ClipHeadDetector

    official = torch.load(shared_igmu / "heads" / "object_church.pth", map_location="cpu",
                          weights_only=True)
    from safetensors.torch import load_file

    ours = load_file(str(head_512 / "head.safetensors"))
    assert {k: tuple(v.shape) for k, v in official.items()} == {
        k: tuple(v.shape) for k, v in ours.items()}
    for path in (shared_igmu / "heads" / "object_church.pth", head_512 / "head.safetensors"):
        ClipHeadDetector(FakeClip(), "h", str(path), 0, 0.5)  # one loader for both


def test_trained_folder_usable_by_name_in_detect(chain: dict) -> None:
    folder = chain["root"] / "det" / "cross"
    data = read_dataigm(chain["root"] / "data")
    cross = next(r for r in data.split("test") if r["label"] == 1)
    other = next(r for r in data.split("test") if r["label"] == 0)
    result = run_cli("detect", "--detector", f"clip_head:{folder}", cross["abs"], other["abs"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["detector"] for line in lines] == ["clip_head:cross"] * 2
    assert [line["flagged"] for line in lines] == [True, False]

"""Every checkpoint form a models file can name gives the images of its pipeline-folder form.

A tiny SD pipeline is edited (UNet, text encoder, VAE perturbed); each published form of the edit
(diffusers or CompVis keys, .safetensors/.pt/.bin/.ckpt, component folders, partial state dicts,
LoRA in peft and kohya/SPM keys, Receler erasers, ConceptPrune masks) is loaded on the unedited
base with `load_source` and must give the same weights (fingerprint) and byte-identical images as
the edited pipeline saved as a folder. Forms that cannot be merged (adapters) are compared with
an independent implementation of the authors' module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from checkpoint_fixtures import (  # noqa: E402
    dyadic_,
    dyadic_tensor,
    text_encoder_to_compvis,
    unet_to_compvis,
    vae_to_compvis,
)
from igmu.core.errors import ConfigError, UnsafeWeightsError  # noqa: E402
from igmu.generation.base import GenerationSettings  # noqa: E402
from igmu.generation.diffusers_backend import DiffusersGenerator  # noqa: E402
from igmu.pipelines.sources import PipelineSource  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PROMPTS = ["a church on a hill", "a red chair"]
SETTINGS = GenerationSettings(num_inference_steps=2, guidance_scale=7.5, height=32, width=32)


def tiny(root: Path):
    from igmu.testing.tiny import make_tiny_sd_pipeline

    return make_tiny_sd_pipeline(tokenizer_dir=root)


def run(source: PipelineSource | str) -> tuple[str, list[np.ndarray]]:
    generator = DiffusersGenerator.load(source, "methods.X", "cpu", pipeline_batch=2)
    return generator.model_fingerprint, generator.generate(PROMPTS * 2, [0, 0, 1, 1], SETTINGS)


def same(a: tuple[str, list[np.ndarray]], b: tuple[str, list[np.ndarray]]) -> bool:
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))


def same_images(a: tuple[str, list[np.ndarray]], b: tuple[str, list[np.ndarray]]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("checkpoints")
    base = tiny(root / "tok")
    base.save_pretrained(root / "base")
    edited = tiny(root / "tok")
    dyadic_(edited.unet, 1)
    dyadic_(edited.text_encoder, 2)
    dyadic_(edited.vae, 3)
    edited.save_pretrained(root / "edited")  # the pipeline-folder form of every edit at once
    references = {"edited": root / "edited"}
    for name, parts in {"unet": ("unet",), "text_encoder": ("text_encoder",),
                        "unet_te": ("unet", "text_encoder")}.items():
        pipe = tiny(root / "tok")
        for part in parts:
            getattr(pipe, part).load_state_dict(getattr(edited, part).state_dict())
        pipe.save_pretrained(root / f"ref_{name}")
        references[name] = root / f"ref_{name}"
    # cross-attention keys/values only (UCE, RECE, DoCo edit these)
    xattn = {k: v for k, v in edited.unet.state_dict().items()
             if ".attn2.to_k." in k or ".attn2.to_v." in k}
    pipe = tiny(root / "tok")
    pipe.unet.load_state_dict(xattn, strict=False)
    pipe.save_pretrained(root / "ref_xattn")
    references["xattn"] = root / "ref_xattn"
    return {"root": root, "base": str(root / "base"), "edited": edited, "xattn": xattn,
            "refs": references, "images": {}}


def reference(world: dict, name: str) -> tuple[str, list[np.ndarray]]:
    if name not in world["images"]:
        world["images"][name] = run(str(world["refs"][name]))
    return world["images"][name]


def source(world: dict, **fields) -> PipelineSource:
    for key in ("weights", "lora", "adapter"):
        if isinstance(fields.get(key), str | Path):
            fields[key] = (str(fields[key]),)
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}
    return PipelineSource(world["base"], "methods.X", **fields)


# ---------------------------------------------------------------------------------------------
# whole components


def unet_forms(world: dict) -> dict[str, Path]:
    root, unet = world["root"] / "unet_forms", world["edited"].unet
    root.mkdir(exist_ok=True)
    state = {k: v.clone().contiguous() for k, v in unet.state_dict().items()}
    forms = {
        "diffusers.safetensors": root / "unet.safetensors",
        "diffusers.pt": root / "unet.pt",
        "prefixed.bin": root / "unet.bin",
        "compvis.ckpt": root / "compvis.ckpt",
        "compvis-bare.safetensors": root / "compvis_bare.safetensors",
        "folder": root / "unet_folder",
    }
    save_file(state, str(forms["diffusers.safetensors"]))
    torch.save(state, forms["diffusers.pt"])
    torch.save({f"unet.{k}": v for k, v in state.items()}, forms["prefixed.bin"])
    compvis = unet_to_compvis(unet)
    torch.save({"state_dict": compvis, "global_step": 7, "epoch": 1}, forms["compvis.ckpt"])
    bare = {k.removeprefix("model.diffusion_model."): v for k, v in compvis.items()}
    save_file(bare, str(forms["compvis-bare.safetensors"]))
    unet.save_pretrained(str(forms["folder"]))
    return forms


def test_unet_forms_match_the_pipeline_folder(world: dict) -> None:
    expected = reference(world, "unet")
    plain = reference(world, "edited")  # sanity: the edit changes images
    base = run(world["base"])
    assert not same_images(base, expected) and not same_images(plain, expected)
    for form, path in unet_forms(world).items():
        assert same(run(source(world, unet=path)), expected), form


def test_text_encoder_forms_match_the_pipeline_folder(world: dict) -> None:
    root, encoder = world["root"] / "te_forms", world["edited"].text_encoder
    root.mkdir(exist_ok=True)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.save_pretrained(str(root / "folder"))  # AdvUnlearn on the hub: a CLIPTextModel
    # AdvUnlearn's released .pt: text-encoder keys under "text_encoder." (+ an old buffer)
    prefixed = {f"text_encoder.{k}": v for k, v in state.items()}
    prefixed["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(prefixed, root / "advunlearn.pt")
    save_file(text_encoder_to_compvis(encoder), str(root / "compvis.safetensors"))
    expected = reference(world, "text_encoder")
    for path in (root / "folder", root / "advunlearn.pt", root / "compvis.safetensors"):
        assert same(run(source(world, text_encoder=path)), expected), path.name


def test_compvis_single_file_checkpoint(world: dict) -> None:
    edited = world["edited"]
    state = {**unet_to_compvis(edited.unet), **vae_to_compvis(edited.vae),
             **text_encoder_to_compvis(edited.text_encoder),
             "betas": torch.linspace(0, 1, 10), "model_ema.decay": torch.tensor(0.99)}
    path = world["root"] / "full.ckpt"
    torch.save({"state_dict": state, "global_step": 3}, path)
    assert same(run(source(world, checkpoint=path)), reference(world, "edited"))
    # a UNet file that is a whole checkpoint is pointed to 'checkpoint:'
    with pytest.raises(ConfigError, match="checkpoint:"):
        run(source(world, unet=path))


# ---------------------------------------------------------------------------------------------
# partial state dicts


def test_partial_cross_attention_weights(world: dict) -> None:
    root = world["root"]
    xattn = {k: v.clone() for k, v in world["xattn"].items()}
    save_file(xattn, str(root / "esd_xattn.safetensors"))  # ESD/UCE: trained params only
    torch.save({"unet": xattn}, root / "doco.bin")  # DoCo / Concept Ablation: {'unet': {...}}
    expected = reference(world, "xattn")
    assert same(run(source(world, weights=root / "esd_xattn.safetensors")), expected)
    assert same(run(source(world, weights=root / "doco.bin")), expected)
    # UNet and text encoder tensors in one file, prefixed
    both = {f"unet.{k}": v for k, v in world["edited"].unet.state_dict().items()}
    both.update({f"text_encoder.{k}": v for k, v in
                 world["edited"].text_encoder.state_dict().items()})
    save_file({k: v.contiguous() for k, v in both.items()}, str(root / "both.safetensors"))
    assert same(run(source(world, weights=root / "both.safetensors")), reference(world, "unet_te"))


def test_not_understood_keys_are_errors_that_list_them(world: dict) -> None:
    root = world["root"]
    state = {k: v.clone().contiguous() for k, v in world["edited"].unet.state_dict().items()}
    state["down_blocks.9.attn9.to_k.weight"] = torch.zeros(2, 2)
    save_file(state, str(root / "junk_unet.safetensors"))
    with pytest.raises(ConfigError, match=r"1 unknown keys: down_blocks\.9\.attn9\.to_k\.weight"):
        run(source(world, unet=root / "junk_unet.safetensors"))
    del state["down_blocks.9.attn9.to_k.weight"], state["conv_in.weight"]
    save_file(state, str(root / "short_unet.safetensors"))
    with pytest.raises(ConfigError, match=r"missing keys: conv_in\.weight"):
        run(source(world, unet=root / "short_unet.safetensors"))
    save_file({"mid_block.nothing.weight": torch.zeros(1)}, str(root / "bad_partial.safetensors"))
    with pytest.raises(ConfigError, match=r"mid_block\.nothing\.weight"):
        run(source(world, weights=root / "bad_partial.safetensors"))
    compvis = {k: v for k, v in unet_to_compvis(world["edited"].unet).items() if "attn2" in k}
    save_file(compvis, str(root / "compvis_partial.safetensors"))
    with pytest.raises(ConfigError, match="diffusers names"):
        run(source(world, weights=root / "compvis_partial.safetensors"))


def test_pickles_load_only_as_plain_tensors(world: dict) -> None:
    """A pickle holding objects (ConceptPrune's released masks are scipy sparse matrices) is
    refused before any code in it can run."""
    import scipy.sparse

    path = world["root"] / "Nudity_skilled_neurons_0.01.pt"
    torch.save({"0_0": scipy.sparse.csr_matrix(np.eye(3))}, path)
    with pytest.raises(UnsafeWeightsError, match="would run code"):
        run(source(world, adapter=path))
    torch.save({"unet": {"a": 3}}, world["root"] / "odd.pt")
    with pytest.raises(UnsafeWeightsError, match=r"unet\.a \(int\)"):
        run(source(world, weights=world["root"] / "odd.pt"))


# ---------------------------------------------------------------------------------------------
# LoRA


def lora_modules(unet) -> list[str]:
    return [n for n, m in unet.named_modules()
            if n.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_q", "ff.net.2"))]


def fused_reference(world: dict, name: str, deltas: dict[str, torch.Tensor]) -> Path:
    pipe = tiny(world["root"] / "tok")
    modules = dict(pipe.unet.named_modules())
    with torch.no_grad():
        for module, delta in deltas.items():
            modules[module].weight.add_(delta)
    pipe.save_pretrained(world["root"] / name)
    return world["root"] / name


def test_lora_in_peft_and_kohya_keys(world: dict) -> None:
    pytest.importorskip("peft")
    unet = tiny(world["root"] / "tok").unet
    modules = dict(unet.named_modules())
    generator = torch.Generator().manual_seed(5)
    rank = 4
    peft_state, kohya_state, peft_delta, kohya_delta = {}, {}, {}, {}
    for name in lora_modules(unet):
        weight = modules[name].weight
        down = dyadic_tensor((rank, weight.shape[1]), generator)
        up = dyadic_tensor((weight.shape[0], rank), generator)
        peft_state[f"unet.{name}.lora_A.weight"] = down
        peft_state[f"unet.{name}.lora_B.weight"] = up
        peft_delta[name] = up @ down  # alpha = rank: scale 1
        kohya = "lora_unet_" + name.replace(".", "_")  # SPM writes SD-webui/kohya names
        kohya_state[f"{kohya}.lora_down.weight"] = down
        kohya_state[f"{kohya}.lora_up.weight"] = up
        kohya_state[f"{kohya}.alpha"] = torch.tensor(2.0)
        kohya_delta[name] = 0.5 * (up @ down)  # alpha / rank
    save_file(peft_state, str(world["root"] / "peft_lora.safetensors"))
    save_file(kohya_state, str(world["root"] / "spm.safetensors"))
    peft_ref = run(str(fused_reference(world, "ref_peft", peft_delta)))
    kohya_ref = run(str(fused_reference(world, "ref_kohya", kohya_delta)))
    assert same(run(source(world, lora=world["root"] / "peft_lora.safetensors")), peft_ref)
    assert same(run(source(world, lora=world["root"] / "spm.safetensors")), kohya_ref)
    half = run(source(world, lora=world["root"] / "spm.safetensors", lora_scale=0.5))
    assert not same_images(half, kohya_ref)
    kohya_state["lora_unet_no_such_module.lora_down.weight"] = torch.zeros(rank, 4)
    kohya_state["lora_unet_no_such_module.lora_up.weight"] = torch.zeros(4, rank)
    save_file(kohya_state, str(world["root"] / "bad_lora.safetensors"))
    with pytest.raises(ConfigError, match="no_such_module"):
        run(source(world, lora=world["root"] / "bad_lora.safetensors"))
    save_file({"conv_in.weight": torch.zeros(1)}, str(world["root"] / "not_lora.safetensors"))
    with pytest.raises(ConfigError, match="no LoRA keys"):
        run(source(world, lora=world["root"] / "not_lora.safetensors"))


# ---------------------------------------------------------------------------------------------
# adapters


class _AttentionWithEraser(torch.nn.Module):
    """Receler's module, written from its description: attn2's output plus the eraser's."""

    def __init__(self, attn, eraser) -> None:
        super().__init__()
        self.attn, self.eraser = attn, eraser

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask, **kwargs)
        return self.eraser(out) + out


def test_receler_erasers(world: dict) -> None:
    pipe = tiny(world["root"] / "tok")
    generator = torch.Generator().manual_seed(9)
    erasers, state = {}, {}
    for name, module in pipe.unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        dim = module.transformer_blocks[0].attn2.to_out[0].weight.shape[1]
        eraser = torch.nn.Sequential(torch.nn.Linear(dim, 8), torch.nn.GELU(),
                                     torch.nn.Linear(8, dim))
        with torch.no_grad():
            for p in eraser.parameters():
                p.copy_(dyadic_tensor(tuple(p.shape), generator))
        erasers[name] = eraser
        state[name] = {"down.weight": eraser[0].weight, "down.bias": eraser[0].bias,
                       "up.weight": eraser[2].weight, "up.bias": eraser[2].bias}
    folder = world["root"] / "receler"
    folder.mkdir()
    torch.save({k: {n: t.detach().clone() for n, t in v.items()} for k, v in state.items()},
               folder / "eraser_weights.pt")
    (folder / "eraser_config.json").write_text(json.dumps({"eraser_type": "adapter",
                                                           "eraser_rank": 8}))
    modules = dict(pipe.unet.named_modules())
    for name, eraser in erasers.items():
        for block in modules[name].transformer_blocks:
            block.attn2 = _AttentionWithEraser(block.attn2, eraser)
    expected = DiffusersGenerator(pipe, pipeline_batch=2).generate(PROMPTS * 2, [0, 0, 1, 1],
                                                                   SETTINGS)
    loaded = run(source(world, adapter=folder))
    assert all(np.array_equal(a, b) for a, b in zip(loaded[1], expected, strict=True))
    assert loaded[0] != run(world["base"])[0]  # the erasers are part of the fingerprint


def prune_masks(unet, generator: torch.Generator, steps: int) -> dict[str, torch.Tensor]:
    from igmu.pipelines.adapters import ConceptPrune

    masks = {}
    for layer, module in enumerate(ConceptPrune.layers(unet)):
        for step in range(steps):
            columns = torch.randperm(module.weight.shape[1], generator=generator)[:16]
            masks[f"{step}_{layer}"] = columns
    return masks


def test_concept_prune_masks(world: dict) -> None:
    """Masks the same at every step = a pruned UNet saved as a folder; masks per step = the
    weights swapped between steps (diffusers' step-end callback) on a plain pipeline."""
    from igmu.pipelines.adapters import ConceptPrune

    pipe = tiny(world["root"] / "tok")
    layers = ConceptPrune.layers(pipe.unet)
    generator = torch.Generator().manual_seed(4)
    one = prune_masks(pipe.unet, generator, 1)
    save_file(one, str(world["root"] / "prune_static.safetensors"))
    with torch.no_grad():
        for layer, module in enumerate(layers):
            module.weight[:, one[f"0_{layer}"]] = 0
    pipe.save_pretrained(world["root"] / "ref_pruned")
    static = run(source(world, adapter=world["root"] / "prune_static.safetensors"))
    assert same_images(static, run(str(world["root"] / "ref_pruned")))

    two = prune_masks(pipe.unet, generator, 2)
    save_file(two, str(world["root"] / "prune_steps.safetensors"))
    plain = tiny(world["root"] / "tok")
    originals = [m.weight.detach().clone() for m in ConceptPrune.layers(plain.unet)]

    def set_step(step: int) -> None:
        with torch.no_grad():
            for layer, module in enumerate(ConceptPrune.layers(plain.unet)):
                module.weight.copy_(originals[layer])
                module.weight[:, two[f"{step}_{layer}"]] = 0

    def callback(pipeline, i, t, kwargs):  # after step i, the next step's masks
        set_step(min(i + 1, 1))
        return kwargs

    images = []
    for prompt, seed in zip(PROMPTS * 2, [0, 0, 1, 1], strict=True):
        set_step(0)
        out = plain(prompt=[prompt], num_inference_steps=2, guidance_scale=7.5, height=32,
                    width=32, generator=[torch.Generator().manual_seed(seed)], output_type="np",
                    callback_on_step_end=callback)
        images.append(np.round(np.clip(out.images[0], 0, 1) * 255).astype(np.uint8))
    steps_file = world["root"] / "prune_steps.safetensors"
    loaded = DiffusersGenerator.load(source(world, adapter=steps_file), "methods.X", "cpu",
                                     pipeline_batch=1)
    got = loaded.generate(PROMPTS * 2, [0, 0, 1, 1], SETTINGS)
    assert all(np.array_equal(a, b) for a, b in zip(got, images, strict=True))
    bad = world["root"] / "prune_bad.safetensors"
    save_file({"0_0": torch.zeros(3, dtype=torch.long)}, str(bad))
    with pytest.raises(ConfigError, match="masks for 1 steps x 4 ff.net.2 layers"):
        run(source(world, adapter=world["root"] / "prune_bad.safetensors"))


# ---------------------------------------------------------------------------------------------
# through the models file: igmu generate and igmu unlearn --base-method


def test_models_file_entries_generate_and_unlearn(world: dict, tmp_path: Path) -> None:
    import yaml

    from igmu.backbones.config import load_models_config
    from igmu.cli.unlearn_cmd import main as unlearn_main
    from igmu.generation import GenerateOptions, generate, read_rows
    from igmu.methods import read_method_card
    from igmu.tasks import load_task

    forms = unet_forms(world)
    root = world["root"]
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({
        "generator": {"model": str(root / "base"), "steps": 2, "height": 32, "width": 32},
        "methods": {
            "FOLDER": str(world["refs"]["unet"]),
            "COMPVIS": {"unet": str(forms["compvis.ckpt"].relative_to(root.parent))},
            "LISTED": {"weights": [str(forms["diffusers.safetensors"])]},
        },
    }))
    # relative paths resolve against the models file's folder
    (tmp_path / root.name).symlink_to(root)
    config = load_models_config(models)
    assert config.get("methods")["COMPVIS"]["unet"] == str((tmp_path / root.name / "unet_forms"
                                                            / "compvis.ckpt").resolve())
    options = GenerateOptions(methods=["ORG", "FOLDER", "COMPVIS", "LISTED"],
                              prompt_sets=["forget"], max_prompts_per_class=2, batch_size=2,
                              progress=False)
    generate(load_task("church"), tmp_path / "out", config, options)
    rows = read_rows(tmp_path / "out" / "manifest.jsonl")
    by = {(r["method"], r["prompt_index"]): r for r in rows}
    for index in (0, 1):
        folder = by[("FOLDER", index)]
        assert by[("COMPVIS", index)]["sha256"] == folder["sha256"]
        assert by[("LISTED", index)]["sha256"] == folder["sha256"]
        assert by[("ORG", index)]["sha256"] != folder["sha256"]
    assert "unet=" in by[("COMPVIS", 0)]["model"]

    # UCE on top of a models-file entry = UCE on the same weights as a folder
    common = ["--method", "UCE", "--task", "church", "--quiet"]
    assert unlearn_main([*common, "--models", str(models), "--base-method", "COMPVIS",
                         "--out", str(tmp_path / "uce_entry")]) == 0
    assert unlearn_main([*common, "--base", str(world["refs"]["unet"]),
                         "--out", str(tmp_path / "uce_folder")]) == 0
    entry, folder = (read_method_card(tmp_path / n) for n in ("uce_entry", "uce_folder"))
    assert entry["unet_state_sha256"] == folder["unet_state_sha256"]
    assert "unet=" in entry["base"]["reference"]


def test_models_file_validation(tmp_path: Path) -> None:
    from igmu.backbones.config import load_models_config

    path = tmp_path / "models.yaml"
    bad = {
        "methods: {X: {base: ./a, model: ./b}}": "not both",
        "methods: {X: {unet: 3}}": r"unet must be a path",
        "methods: {X: {lora: [./a, 4]}}": r"lora must be a path or a list",
        "methods: {X: {lora_scale: 0.5}}": "lora_scale without lora",
        "methods: {X: {lora: ./a, lora_scale: big}}": "lora_scale must be a number",
        "methods: {X: {unte: ./a}}": "Did you mean 'unet'",
        "methods: {X: {text_encoder2: ./a}}": "Did you mean 'text_encoder_2'",
    }
    for text, message in bad.items():
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_models_config(path)

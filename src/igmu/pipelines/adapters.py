"""Adapters: modules a method adds to the network instead of changing its weights.

The kind is detected from the keys (a registry, one class per kind):

- ``receler`` (Receler, Huang et al. ECCV 2024): the ``eraser_weights.pt`` the authors' code
  writes, ``{"down_blocks.1.attentions.0": {"down.weight", "down.bias", "up.weight",
  "up.bias"}, ...}`` (one eraser per transformer of the UNet, diffusers names;
  ``eraser_config.json`` beside it). Each eraser is Linear(d, r) -> GELU -> Linear(r, d) on the
  output of every cross-attention of that transformer, added to it: ``attn2(x) +
  eraser(attn2(x))``.
- ``concept_prune`` (ConceptPrune, Chavhan et al. 2024): pruning masks of the second
  feed-forward layer (``ff.net.2``) per denoising step and layer, keys ``"<step>_<layer>"`` (the
  authors' ``"{i}_{j}"``), each a mask of the weight's shape or a 1-D list of pruned neuron
  (column) indices, layers in the order the UNet runs them. The authors' file pickles scipy
  sparse matrices, which igmu refuses to unpickle: convert it to safetensors where you trust it
  (docs/design/checkpoints-and-families.md shows how). The step of a UNet call is read from its
  timestep: step = floor((T_train - t) * S / T_train) for S mask steps (the authors' 50-step
  sampler gives 0..49).

Each adapter registers its tensors inside the UNet (so the generator fingerprint covers them)
and hooks its forward; a pipeline with adapters cannot be saved as a pipeline folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from igmu.core.errors import ConfigError
from igmu.core.files import read_text
from igmu.core.registry import Registry

ADAPTERS: Registry[type] = Registry("adapter kind")
ADAPTER_ATTRIBUTE = "igmu_adapters"  # names of the adapters applied to a UNet


def register_adapter(cls: type) -> type:
    ADAPTERS.register(cls.name)(cls)
    return cls


def _torch_nn() -> Any:
    from torch import nn

    return nn


class _Kind:
    name: ClassVar[str] = ""
    file_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def detect(cls, state: dict[str, Any], unet: Any) -> bool:
        raise NotImplementedError

    @classmethod
    def apply(cls, pipeline: Any, state: dict[str, Any], folder: Path | None, where: str) -> None:
        raise NotImplementedError


@register_adapter
class Receler(_Kind):
    name = "receler"
    file_names = ("eraser_weights.pt", "eraser_weights.safetensors")
    KEY = re.compile(r"^(?P<prefix>.+)\.(?P<part>down|up)\.(?P<kind>weight|bias)$")

    @classmethod
    def detect(cls, state: dict[str, Any], unet: Any) -> bool:
        modules = dict(unet.named_modules())
        matches = [cls.KEY.match(k) for k in state]
        return bool(state) and all(
            m and type(modules.get(m["prefix"])).__name__ == "Transformer2DModel" for m in matches
        )

    @classmethod
    def apply(cls, pipeline: Any, state: dict[str, Any], folder: Path | None, where: str) -> None:
        import torch

        nn = _torch_nn()
        unet = pipeline.unet
        if folder is not None and (folder / "eraser_config.json").is_file():
            config = json.loads(read_text(folder / "eraser_config.json", "eraser config"))
            if config.get("eraser_type", "adapter") != "adapter":
                raise ConfigError(f"{where}: {folder}/eraser_config.json: eraser_type "
                                  f"{config.get('eraser_type')!r} is not supported ('adapter')")
        prefixes = sorted({cls.KEY.match(k)["prefix"] for k in state})
        modules = dict(unet.named_modules())
        for prefix in prefixes:
            weights = {k[len(prefix) + 1:]: v for k, v in state.items()
                       if k.startswith(prefix + ".")}
            rank, dim = weights["down.weight"].shape
            for name, block in modules[prefix].named_modules():
                if type(block).__name__ != "BasicTransformerBlock":
                    continue
                attn = block.attn2
                if attn is None or attn.to_out[0].weight.shape[1] != dim:
                    raise ConfigError(f"{where}: eraser {prefix} is {dim} wide; the UNet's "
                                      f"{prefix}.{name}.attn2 is not")
                eraser = nn.Sequential()
                eraser.add_module("down", nn.Linear(dim, rank))
                eraser.add_module("act", nn.GELU())
                eraser.add_module("up", nn.Linear(rank, dim))
                with torch.no_grad():
                    eraser.load_state_dict(weights)
                eraser.to(dtype=attn.to_out[0].weight.dtype)
                attn.add_module("igmu_eraser", eraser)
                attn.register_forward_hook(_erase)


def _erase(module: Any, args: Any, output: Any) -> Any:
    return output + module.igmu_eraser(output)


@register_adapter
class ConceptPrune(_Kind):
    name = "concept_prune"
    KEY = re.compile(r"^(?P<step>\d+)_(?P<layer>\d+)$")

    @classmethod
    def detect(cls, state: dict[str, Any], unet: Any) -> bool:
        return bool(state) and all(cls.KEY.match(k) for k in state)

    @staticmethod
    def layers(unet: Any) -> list[Any]:
        """The second feed-forward Linear of every transformer block, in the order the UNet
        runs them (down, mid, up)."""
        order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
        found = [(order.get(n.split(".")[0], 3), i, m) for i, (n, m) in
                 enumerate(unet.named_modules()) if n.endswith("ff.net.2")]
        return [m for _, _, m in sorted(found, key=lambda item: item[:2])]

    @classmethod
    def apply(cls, pipeline: Any, state: dict[str, Any], folder: Path | None, where: str) -> None:
        import torch

        nn = _torch_nn()
        unet = pipeline.unet
        layers = cls.layers(unet)
        keys = {(int(m["step"]), int(m["layer"])): k for k in state if (m := cls.KEY.match(k))}
        steps = 1 + max(s for s, _ in keys)
        expected = {(s, j) for s in range(steps) for j in range(len(layers))}
        if set(keys) != expected:
            raise ConfigError(
                f"{where}: masks for {steps} steps x {len(layers)} ff.net.2 layers expected; "
                f"missing {sorted(expected - set(keys))[:5]}, unknown "
                f"{sorted(set(keys) - expected)[:5]}"
            )
        holder = nn.Module()
        for (step, layer), key in sorted(keys.items()):
            weight = layers[layer].weight
            mask = state[key]
            if mask.ndim == 1:  # pruned neuron indices -> whole columns
                dense = torch.zeros(weight.shape, dtype=torch.bool)
                dense[:, mask.long()] = True
                mask = dense
            if tuple(mask.shape) != tuple(weight.shape):
                raise ConfigError(f"{where}: mask {key} has shape {tuple(mask.shape)}, layer "
                                  f"{layer} weight {tuple(weight.shape)}")
            holder.register_buffer(f"mask_{step}_{layer}", mask.to(torch.bool))
        unet.add_module("igmu_concept_prune", holder)
        state_box = {"step": 0, "layer": 0}
        train_steps = int(pipeline.scheduler.config.num_train_timesteps)

        def on_unet(module: Any, args: Any, kwargs: Any) -> None:
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            t = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
            state_box["step"] = min(steps - 1, max(0, int((train_steps - t) * steps
                                                          // train_steps)))
            state_box["layer"] = 0

        def on_layer(module: Any, args: Any, output: Any) -> Any:
            layer = layers.index(module)
            mask = getattr(holder, f"mask_{state_box['step']}_{layer}")
            weight = module.weight * (~mask).to(module.weight.dtype)
            return torch.nn.functional.linear(args[0], weight, module.bias)

        unet.register_forward_pre_hook(on_unet, with_kwargs=True)
        for layer in layers:
            layer.register_forward_hook(on_layer)


def apply_adapter(pipeline: Any, path: Path, where: str) -> None:
    """Detect the adapter kind of ``path`` (file or folder) from its keys and apply it."""
    from igmu.pipelines.checkpoints import read

    folder = path if path.is_dir() else None
    target = path
    if folder is not None:
        named = [folder / n for kind in ADAPTERS for n in ADAPTERS.get(kind).file_names]
        present = [p for p in named if p.is_file()]
        target = present[0] if present else folder
    state = read(target, where)
    unet = pipeline.unet
    kinds = [k for k in ADAPTERS if ADAPTERS.get(k).detect(state, unet)]
    if len(kinds) != 1:
        sample = ", ".join(sorted(state)[:8])
        raise ConfigError(
            f"{where}: {target}: {'no' if not kinds else 'more than one'} adapter kind "
            f"({', '.join(ADAPTERS.names())}) fits its keys ({sample}"
            f"{' ...' if len(state) > 8 else ''})"
        )
    ADAPTERS.get(kinds[0]).apply(pipeline, state, folder, where)
    applied = list(getattr(unet, ADAPTER_ATTRIBUTE, []))
    setattr(unet, ADAPTER_ATTRIBUTE, [*applied, kinds[0]])

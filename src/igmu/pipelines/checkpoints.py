"""Apply a models-file entry's weights to a loaded pipeline; the format comes from the keys.

- ``checkpoint``: a CompVis/LDM single-file checkpoint (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.*``): UNet, VAE and
  text encoder(s) converted with diffusers' own single-file converters.
- ``unet`` / ``text_encoder`` / ``text_encoder_2``: a component folder (``config.json`` + weights,
  or a pipeline folder's subfolder) loaded with its config, or a full state dict file in diffusers
  keys, prefixed diffusers keys (``unet.*``, ``text_encoder.*``) or CompVis keys (converted).
- ``weights``: a partial state dict in diffusers keys (bare, or prefixed ``unet.`` /
  ``text_encoder.`` / ``text_encoder_2.``, nesting allowed: ``{"unet": {...}}``).
- ``lora``: LoRA weights through diffusers' ``load_lora_weights`` (diffusers/peft keys, kohya/
  SD-webui keys as SPM writes them), fused into the weights at ``lora_scale``.
- ``adapter``: modules added to the network (`igmu.pipelines.adapters`).

Files load through safetensors or ``torch.load(weights_only=True)``; a key that is not
understood is an error that lists it (`ConfigError`), never silently dropped.
"""

from __future__ import annotations

import logging as std_logging
import re
from pathlib import Path
from typing import Any

from igmu.backbones.weights import unsafe_pickle_refusal
from igmu.core.errors import ConfigError, MissingExtraError, ModelNotFoundError

COMPVIS_UNET = "model.diffusion_model."
COMPVIS_UNET_BARE = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.",
                     "label_emb.")
COMPVIS_VAE = "first_stage_model."
COMPVIS_CLIP = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
COMPVIS_OPEN_CLIP = {"cond_stage_model.model.": "text_encoder",
                     "conditioner.embedders.1.model.": "text_encoder_2"}
# Bookkeeping of LDM checkpoints: the noise schedule (the base's scheduler is used) and the EMA
# copy (the non-EMA weights are converted, as diffusers does by default).
COMPVIS_IGNORED = ("model_ema.", "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_",
                   "log_one_minus_alphas_cumprod", "posterior_", "logvar")
LORA_MARKERS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up",
                "lora_linear_layer")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TEXT_ROLES = ("text_encoder", "text_encoder_2")


def _listing(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def weight_file(path: Path, where: str) -> Path:
    """A weights file, or the single weights file of a folder (safetensors preferred)."""
    if path.is_file():
        return path
    if not path.exists():
        raise ModelNotFoundError(f"{where}: {path} does not exist")
    found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    safe = [p for p in found if p.suffix == ".safetensors"]
    choice = safe or found
    if len(choice) != 1:
        raise ConfigError(
            f"{where}: folder {path} has {len(choice) or 'no'} weights files "
            f"({', '.join(p.name for p in choice) or 'none'}); name the file"
        )
    return choice[0]


def read(path: str | Path, where: str) -> dict[str, Any]:
    from igmu.backbones.weights import load_tensors

    return load_tensors(weight_file(Path(path), where), where)


def apply_weights(pipeline: Any, role: str, path: str, where: str, lora_scale: float = 1.0
                  ) -> None:
    """Apply one weights source of a models-file entry (``role`` = its field) to ``pipeline``."""
    if role == "checkpoint":
        apply_single_file(pipeline, Path(path), where)
    elif role == "unet" or role in TEXT_ROLES:
        apply_component(pipeline, role, Path(path), where)
    elif role == "weights":
        apply_partial(pipeline, Path(path), where)
    elif role == "lora":
        apply_lora(pipeline, Path(path), where, lora_scale)
    elif role == "adapter":
        from igmu.pipelines.adapters import apply_adapter

        apply_adapter(pipeline, Path(path), where)
    else:
        raise ValueError(f"unknown weights role {role!r}")


# ---------------------------------------------------------------------------------------------
# checking and loading state dicts


def load_into(module: Any, state: dict[str, Any], where: str, path: Path, partial: bool) -> None:
    """Copy ``state`` into ``module``: every key must name one of its tensors with the same
    shape; without ``partial`` every tensor of the module must be given."""
    import torch

    expected = module.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = [] if partial else sorted(set(expected) - set(state))
    shapes = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown keys: {_listing(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if shapes:
        problems.append(f"shapes differ: {_listing(shapes, 5)}")
    if problems:
        raise ConfigError(f"{where}: {path} does not fit the {type(module).__name__}: "
                          + "; ".join(problems))
    with torch.no_grad():
        module.load_state_dict(state, strict=not partial)


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _converted_unet(state: dict[str, Any], unet: Any, where: str, path: Path) -> dict[str, Any]:
    """CompVis UNet keys (``model.diffusion_model.*``) -> diffusers keys, with diffusers'
    converter; a CompVis key the converter leaves unused is reported."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = {k: v for k, v in state.items() if k.startswith(COMPVIS_UNET)}
    converted = convert_ldm_unet_checkpoint(ours, dict(unet.config))
    used = {id(v) for v in converted.values()}
    unused = sorted(k for k, v in ours.items() if id(v) not in used)
    if unused:
        raise ConfigError(f"{where}: {path}: CompVis UNet keys the conversion does not "
                          f"understand: {_listing(unused)}")
    return converted


def component_state(state: dict[str, Any], role: str, module: Any, where: str, path: Path
                    ) -> dict[str, Any]:
    """A whole component's state dict in diffusers keys, whatever naming it came in."""
    keys = list(state)
    if role == "unet":
        if any(k.startswith(COMPVIS_UNET) for k in keys):
            other = sorted({k.split(".")[0] for k in keys if not k.startswith(COMPVIS_UNET)})
            if other:
                raise ConfigError(
                    f"{where}: {path} holds more than a UNet (keys under {', '.join(other)}); "
                    "give a whole CompVis checkpoint as 'checkpoint:'"
                )
            return _converted_unet(state, module, where, path)
        if any(k.startswith(COMPVIS_UNET_BARE) for k in keys) and not any(
            k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys
        ):
            return _converted_unet({COMPVIS_UNET + k: v for k, v in state.items()}, module,
                                   where, path)
        if keys and all(k.startswith("unet.") for k in keys):
            return _strip(state, "unet.")
        return state
    for prefix in COMPVIS_CLIP:
        if any(k.startswith(prefix) for k in keys):
            from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

            state = convert_ldm_clip_checkpoint(state)
            break
    else:
        if keys and all(k.startswith(f"{role}.") for k in keys):
            state = _strip(state, f"{role}.")
    # transformers < 4.31 saved the position ids buffer; it is not a weight
    return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}


def _component_folder(path: Path, role: str) -> Path | None:
    if (path / role / "config.json").is_file():
        return path / role
    if (path / "config.json").is_file():
        return path
    return None


def apply_component(pipeline: Any, role: str, path: Path, where: str) -> None:
    """Replace a whole component: from a folder with its config, or from a state dict file."""
    module = getattr(pipeline, role, None)
    if module is None:
        raise ConfigError(f"{where}: the base pipeline ({type(pipeline).__name__}) has no {role}")
    folder = _component_folder(path, role) if path.is_dir() else None
    if folder is not None:
        import torch

        try:
            # float32 after loading: transformers >= 4.56 renames torch_dtype, older ones
            # do not know dtype, and both load float32 by default
            loaded = type(module).from_pretrained(str(folder)).to(torch.float32)
        except Exception as exc:
            refusal = unsafe_pickle_refusal(exc, f"{where}: {folder}")
            if refusal is not None:
                raise refusal from None
            raise ModelNotFoundError(
                f"{where}: cannot load {type(module).__name__} from {folder}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        pipeline.register_modules(**{role: loaded.eval()})
        return
    state = read(path, where)
    load_into(module, component_state(state, role, module, where, path), where, path, False)


def apply_single_file(pipeline: Any, path: Path, where: str) -> None:
    """A CompVis single-file checkpoint: its UNet, and its VAE and text encoder(s) when present,
    converted by diffusers' single-file converters; other keys are errors."""
    from diffusers.loaders import single_file_utils as sf

    state = read(path, where)
    keys = list(state)
    if not any(k.startswith(COMPVIS_UNET) for k in keys):
        raise ConfigError(f"{where}: {path} is not a CompVis checkpoint (no {COMPVIS_UNET}* keys)")
    known = (COMPVIS_UNET, COMPVIS_VAE, *COMPVIS_CLIP, *COMPVIS_OPEN_CLIP, *COMPVIS_IGNORED)
    unknown = sorted(k for k in keys if not k.startswith(known))
    if unknown:
        raise ConfigError(f"{where}: {path}: keys of no known part: {_listing(unknown)}")
    unet = pipeline.unet
    load_into(unet, _converted_unet(state, unet, where, path), where, path, False)
    if any(k.startswith(COMPVIS_VAE) for k in keys):
        vae = getattr(pipeline, "vae", None)
        if vae is None:
            raise ConfigError(f"{where}: {path} has a VAE but the base pipeline has none")
        converted = sf.convert_ldm_vae_checkpoint(state, dict(vae.config))
        load_into(vae, converted, where, path, False)
    if any(k.startswith(COMPVIS_CLIP) for k in keys):
        load_into(pipeline.text_encoder,
                  component_state(state, "text_encoder", pipeline.text_encoder, where, path),
                  where, path, False)
    for prefix, role in COMPVIS_OPEN_CLIP.items():
        if any(k.startswith(prefix) for k in keys):
            module = getattr(pipeline, role, None)
            if module is None:
                raise ConfigError(f"{where}: {path} has an OpenCLIP text encoder ({prefix}*) but "
                                  f"the base pipeline has no {role}")
            converted = sf.convert_open_clip_checkpoint(module, state, prefix=prefix)
            load_into(module, converted, where, path, False)


def apply_partial(pipeline: Any, path: Path, where: str) -> None:
    """Some tensors of the UNet and/or text encoders, in diffusers keys."""
    state = read(path, where)
    modules = {role: getattr(pipeline, role, None) for role in ("unet", *TEXT_ROLES)}
    modules = {role: m for role, m in modules.items() if m is not None}
    if any(k.startswith((COMPVIS_UNET, *COMPVIS_UNET_BARE, *COMPVIS_CLIP)) for k in state):
        raise ConfigError(
            f"{where}: {path} has CompVis (LDM) keys; a partial state dict must use diffusers "
            "names (a whole CompVis UNet goes in 'unet:', a whole checkpoint in 'checkpoint:')"
        )
    names = {role: set(m.state_dict()) for role, m in modules.items()}
    groups: dict[str, dict[str, Any]] = {role: {} for role in modules}
    unknown = []
    for key, value in state.items():
        role, _, rest = key.partition(".")
        if role in groups and rest in names[role]:
            groups[role][rest] = value
            continue
        owner = next((r for r in groups if key in names[r]), None)
        if owner is None:
            unknown.append(key)
        else:
            groups[owner][key] = value
    if unknown:
        raise ConfigError(
            f"{where}: {path}: {len(unknown)} keys name no tensor of the "
            f"{' or '.join(groups)}: {_listing(sorted(unknown))}"
        )
    for role, part in groups.items():
        if part:
            load_into(modules[role], part, where, path, True)


LORA_DOWN = re.compile(r"^(?P<module>.+?)\.(lora_down|lora_A|lora\.down|lora_linear_layer\.down)"
                       r"(\.[^.]+)?\.weight$")


def _lora_targets(state: dict[str, Any]) -> list[str]:
    """The module name of every low-rank pair in a LoRA state dict, as the file spells it."""
    return sorted({m["module"] for key in state if (m := LORA_DOWN.match(key))})


def _injected(pipeline: Any) -> tuple[set[str], int]:
    """(names of the modules diffusers gave LoRA layers, in diffusers and kohya spelling, and
    how many modules that is)."""
    names, count = set(), 0
    for role in ("unet", *TEXT_ROLES, "transformer"):
        module = getattr(pipeline, role, None)
        if module is None:
            continue
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_",
                  "text_encoder_2": "lora_te2_"}.get(role, "")
        for name, sub in module.named_modules():
            if hasattr(sub, "lora_A") and len(getattr(sub, "lora_A", {})):
                names.update({name, f"{role}.{name}", prefix + name.replace(".", "_")})
                count += 1
    return names, count


def apply_lora(pipeline: Any, path: Path, where: str, scale: float) -> None:
    """Load LoRA weights with diffusers (peft backend), fuse them at ``scale``, unload the
    adapter layers: the pipeline is then a plain one whose weights carry the LoRA."""
    if not hasattr(pipeline, "load_lora_weights"):
        raise ConfigError(f"{where}: {type(pipeline).__name__} cannot load LoRA weights")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise MissingExtraError("LoRA weights (models file 'lora:')", "generate", "peft") from None
    state = read(path, where)
    if not any(marker in key for key in state for marker in LORA_MARKERS):
        raise ConfigError(f"{where}: {path} has no LoRA keys (lora_A/lora_B, lora_down/lora_up); "
                          f"keys: {_listing(sorted(state))}")
    name = "igmu"  # each LoRA is fused and its layers unloaded before the next one loads
    targets = _lora_targets(state)
    logger = std_logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(std_logging.ERROR)  # "no LoRA keys for the text encoder" and the like
    try:
        pipeline.load_lora_weights(dict(state), adapter_name=name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"{where}: diffusers cannot load {path} as LoRA weights: {exc}") from None
    finally:
        logger.setLevel(level)
    injected, count = _injected(pipeline)
    unmatched = [t for t in targets if t not in injected]
    # names may differ (kohya files for SDXL use CompVis block names); the count may not
    if unmatched and count < len(targets):
        pipeline.unload_lora_weights()
        raise ConfigError(f"{where}: {path}: LoRA weights for modules the model does not have "
                          f"(or that diffusers could not map): {_listing(unmatched)}")
    pipeline.fuse_lora(lora_scale=scale, adapter_names=[name])
    pipeline.unload_lora_weights()

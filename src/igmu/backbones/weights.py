"""Load weights without executing code: safetensors, or torch.load(weights_only=True)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from igmu.backbones.file_hashes import file_sha256
from igmu.core.errors import ModelNotFoundError, UnsafeWeightsError


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (remembered across runs while the file is unchanged)."""
    return file_sha256(path)


def weights_fingerprint(folder: Path) -> str:
    """sha256 over a model folder's weight files (names + contents), stable across copies."""
    files = sorted(
        p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt", ".onnx")
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def unsafe_pickle_refusal(exc: BaseException, what: str) -> UnsafeWeightsError | None:
    """igmu's words for a pickle that a library loader (diffusers, transformers) refused through
    torch's safe unpickler, whose own message advises switching the protection off; None for
    any other error."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:  # loaders wrap torch's error in their own
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    if not any("Weights only load failed" in text or "weights_only" in text for text in chain):
        return None
    return UnsafeWeightsError(
        f"{what}: a weights file there is a pickle that would run code when loaded (it holds "
        "objects, not only tensors); refusing it. Convert its weights to .safetensors where you "
        "trust it."
    )


def _load_tensor_pickle(path: Path, what: str) -> object:
    """``torch.load`` with ``weights_only``: a pickle that would run code is refused, named."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).lower()
        # torch's safe unpickler names the global it refused; plain corruption names none.
        if "global" in text and ("unsupported" in text or "not allowed" in text):
            raise UnsafeWeightsError(
                f"{what}: {path} is a pickle that would run code when loaded (it holds objects, "
                "not only tensors); refusing it. Convert it to .safetensors or to a plain tensor "
                "state dict where you trust it."
            ) from None
        raise UnsafeWeightsError(f"{what}: cannot read {path} as weights: {exc}") from None


def load_state_dict(path: str | Path, what: str) -> dict:
    """A plain tensor state dict from .safetensors or a pickle that holds only tensors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{what}: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types for a bad header
            raise UnsafeWeightsError(
                f"{what}: {path} is not a valid safetensors file: {exc}"
            ) from None
    state = _load_tensor_pickle(path, what)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeWeightsError(f"{what}: {path} does not hold a plain tensor state dict")
    return state


def load_tensors(path: str | Path, what: str) -> dict:
    """Like `load_state_dict`, but nested dicts of tensors are flattened with "." (``{"unet":
    {"a.weight": t}}`` -> ``{"unet.a.weight": t}``), as some published checkpoints nest them;
    a Lightning checkpoint's ``state_dict`` is unwrapped and its bookkeeping (epoch, step, ...)
    dropped. Anything else that is not a tensor is refused, named."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_state_dict(path, what)
    if not path.is_file():
        raise ModelNotFoundError(f"{what}: weights file {path} does not exist")
    state = _load_tensor_pickle(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UnsafeWeightsError(f"{what}: {path} holds a {type(state).__name__}, not a state dict")
    flat: dict = {}
    odd: list[str] = []

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                flat[name] = value
            elif isinstance(value, dict):
                walk(f"{name}.", value)
            else:
                odd.append(f"{name} ({type(value).__name__})")

    walk("", state)
    if odd:
        raise UnsafeWeightsError(
            f"{what}: {path} holds entries that are not tensors: {', '.join(odd[:8])}"
            + (f" and {len(odd) - 8} more" if len(odd) > 8 else "")
        )
    return flat

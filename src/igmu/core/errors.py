"""Errors a user can act on. The CLI prints their message and exits non-zero."""


class IGMUError(Exception):
    """Base class for every error IGMU raises on purpose."""

    exit_code = 2


class ConfigError(IGMUError):
    """A YAML file, task, models file or option is invalid; the message names file and field."""


class ImageError(IGMUError):
    """An image cannot be decoded safely; the message names the file."""


class PairingError(IGMUError):
    """Images do not pair up by key; the message lists the culprits."""


class ModelNotFoundError(IGMUError):
    """A network could not be resolved from a Hugging Face id or a local path."""


class UnsafeWeightsError(IGMUError):
    """A weights file would execute code when loaded, or is not a tensor file at all."""


class MissingExtraError(IGMUError):
    """An optional backend is not installed."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'igmu[{extra}]'"
        )

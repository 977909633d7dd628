"""Settings given as text (``--set KEY=VALUE``) or YAML, read as their default's type; one
parser for every plugin kind that has settings (methods, attacks)."""

from __future__ import annotations

from typing import Any

from igmu.core.errors import ConfigError


def as_bool(value: Any, where: str) -> bool:
    """A boolean setting given as a bool or as text (true/yes/1, false/no/0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{where} must be true or false, got {value!r}")


def coerce(value: Any, default: Any, where: str) -> Any:
    """``value`` as the type of ``default`` (text, bool, int or float); None stays None; a
    default of None takes text. ``where`` names the setting in errors."""
    if value is None:
        return None
    if default is None or isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    if isinstance(default, bool):
        return as_bool(value, where)
    try:
        number = float(value)
    except (TypeError, ValueError):
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(f"{where} must be {kind}, got {value!r}") from None
    if isinstance(default, int):
        if not number.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(number)
    return number

"""Config values read as their type, by one parser each, for every layer (the pipeline's checks,
the evaluations' settings, the entry points' arguments)."""

from __future__ import annotations

from typing import Any

from src.errors import ConfigValueError

TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


def parse_bool(key: str, value: Any) -> bool:
    """A yes-or-no value: true/false, yes/no or 1/0 (any case); anything else is refused in one line
    (`bool("flase")` would be true)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ConfigValueError(
        f"{key}={value} is not a boolean: give {key}=true or {key}=false (or yes/no, 1/0)."
    )

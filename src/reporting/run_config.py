"""The run's config as the loggers are given it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that only say how to build an object (Hydra's), not what a run is.
BUILD_KEYS = ("_target_", "_recursive_", "_convert_")


def logged_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a logger shows it: without Hydra's node and the build keys."""
    task = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return _without_build_keys(OmegaConf.to_container(task, resolve=True))


def _without_build_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_build_keys(item) for key, item in value.items() if key not in BUILD_KEYS}
    if isinstance(value, list):
        return [_without_build_keys(item) for item in value]
    return value

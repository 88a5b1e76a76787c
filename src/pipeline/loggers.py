"""The one builder of a run's Lightning loggers (conf/logger/), each writing into the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from src.pipeline.config import build

# Keys that only say how to build an object (Hydra's), not what a run is.
BUILD_KEYS = ("_target_", "_recursive_", "_convert_")


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The configured loggers with save_dir = the run folder, each given the run's config once."""
    loggers = [build(logger_cfg, save_dir=str(run_dir)) for logger_cfg in cfg.logger.values()]
    for logger in loggers:
        logger.log_hyperparams(logged_config(cfg))
    return loggers


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

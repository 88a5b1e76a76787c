"""The one builder of a run's Lightning loggers (conf/logger/), each writing into the run folder."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from src.pipeline.config import build
from src.reporting.run_config import logged_config


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The configured loggers with save_dir = the run folder, each given the run's config once."""
    loggers = [build(logger_cfg, save_dir=str(run_dir)) for logger_cfg in cfg.logger.values()]
    for logger in loggers:
        logger.log_hyperparams(logged_config(cfg))
    return loggers

"""The one builder of a run's Lightning loggers (conf/logger/), each writing into the run folder."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from src.pipeline.config import build


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The configured loggers with save_dir = the run folder, each given the resolved config."""
    loggers = [build(logger_cfg, save_dir=str(run_dir)) for logger_cfg in cfg.logger.values()]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers

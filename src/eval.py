"""`python -m src.eval ckpt_path=<run>/checkpoints/<name>.ckpt`: re-run the test evaluation of a
saved model into a new run folder (metrics.json with the test/* keys, figures), through the same
post-test code path as training (`src.run.test_and_record`). The model, data, trainer and seed come
from the config the training run saved as <run>/config.yaml."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.run import build, guarded, test_and_record


def run_config(ckpt_path: Path) -> DictConfig:
    """The resolved config of the run that wrote `ckpt_path` (<run>/checkpoints/x.ckpt)."""
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist. Point it at a saved model, e.g. "
            "ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt (or last.ckpt)."
        )
    config_file = ckpt_path.resolve().parent.parent / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: src.eval rebuilds the model and data from the config.yaml of the "
            f"run that wrote the checkpoint, which lies beside the run's checkpoints/ folder. Keep "
            f"{ckpt_path.name} in <run>/checkpoints/, or copy that run's config.yaml to {config_file}."
        )
    return OmegaConf.load(config_file)


def read_history(path: Path) -> list[dict[str, float]]:
    """The training run's history.csv (for the loss curves); empty when it has none."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(handle)]


def evaluate(eval_cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Load the checkpoint into the model its run configured, test it and write `run_dir`."""
    ckpt_path = Path(eval_cfg.ckpt_path).expanduser()
    cfg = run_config(ckpt_path)
    # The new folder records which checkpoint was evaluated; the test stage is the point of it.
    cfg.merge_with(
        eval_cfg.get("overrides") or {},
        {"ckpt_path": str(ckpt_path.resolve()), "test": True, "figures": eval_cfg.figures},
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = build(cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    if cfg.seed is not None:  # the VAE's sampled test/loss: the same numbers on every evaluation
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    loggers = [build(logger_cfg, save_dir=str(run_dir)) for logger_cfg in cfg.logger.values()]
    # One process: testing needs no distributed strategy, whatever the training run used.
    trainer: pl.Trainer = build(
        cfg.trainer, strategy="auto", devices=1, logger=loggers or False, default_root_dir=str(run_dir)
    )
    metrics: dict[str, Any] = {
        "seed": cfg.seed,
        # The optimiser steps the model had (its epoch count depends on the hook that saved it).
        "steps": checkpoint["global_step"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    history = read_history(ckpt_path.resolve().parent.parent / "history.csv")
    return test_and_record(cfg, run_dir, trainer, model, datamodule, metrics, loggers, history)


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    return guarded(evaluate, cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()

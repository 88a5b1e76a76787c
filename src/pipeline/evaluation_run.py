"""Re-running the test stage of a saved model into a new run folder, through the same finishing path
as training: the model, data and seed come from the config its run saved (config.yaml)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from src.pipeline.checkpoints import load_model, run_config, run_folder
from src.pipeline.config import build
from src.pipeline.finishing import finish
from src.pipeline.run import Run
from src.values import parse_bool


def read_history(path: Path) -> list[dict[str, float]]:
    """A run's history.csv (for the loss curves); empty when it has none."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(handle)]


def evaluate_checkpoint(run: Run) -> dict[str, Any]:
    """The job of `src.eval` (run.cfg: conf/eval.yaml's keys): load `ckpt_path` into the model its
    run configured and finish it into this run's folder, as training finishes a run."""
    eval_cfg = run.cfg
    ckpt_path = Path(eval_cfg.ckpt_path).expanduser()
    cfg = run_config(ckpt_path)
    # The new folder records which checkpoint was evaluated; the test stage is the point of it.
    cfg.merge_with(
        eval_cfg.get("overrides") or {},
        {
            "ckpt_path": str(ckpt_path.resolve()),
            "test": True,
            "figures": parse_bool("figures", eval_cfg.figures),
            "job_type": "eval",
        },
    )
    # The saved config has its loggers' settings resolved for training: a logger that tells jobs
    # apart (W&B) gets this one as an evaluation, out of the training sweep's groups.
    for logger_cfg in (cfg.get("logger") or {}).values():
        if "job_type" in logger_cfg:
            logger_cfg.job_type = "eval"
            logger_cfg.name = f"eval {logger_cfg.get('name') or ''}".strip()
            logger_cfg.group = None
    run.cfg = cfg  # from here on the run is the evaluated model's, as its config.yaml will say
    run.start()
    model, checkpoint = load_model(ckpt_path, cfg)
    if cfg.seed is not None:  # the VAE's sampled test/loss: the same numbers on every evaluation
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    metrics: dict[str, Any] = {
        "seed": cfg.seed,
        # The optimiser steps the model had (its epoch count depends on the hook that saved it).
        "steps": checkpoint["global_step"],
        "parameters": sum(p.numel() for p in model.parameters()),
        # The weights every metric here was measured on.
        "checkpoint": str(ckpt_path.resolve()),
    }
    history = read_history(run_folder(ckpt_path) / "history.csv")
    return finish(run, model, datamodule, metrics, history)

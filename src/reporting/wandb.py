"""Weights & Biases: whether to run offline, a finished run's last metrics and figures, and the
sweep summary run. `wandb` itself is imported only where a run is logged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def wandb_is_offline() -> bool:
    """True unless the user has configured W&B: WANDB_MODE=online, an API key, or `wandb login`."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode != "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return not (os.environ.get("WANDB_API_KEY") or logged_in)


def finish_runs(loggers: Sequence[Any], metrics: dict[str, Any], figures: Sequence[Path]) -> None:
    """Send the run's final metrics and figures to each W&B logger, then finish its run."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_metrics({key: value for key, value in metrics.items() if isinstance(value, float)})
            if figures:
                logger.log_image("figures", [str(p) for p in figures], caption=[p.stem for p in figures])
            logger.experiment.finish()


def log_summary(config: DictConfig, sweep_dir: Path, summary: dict[str, Any]) -> None:
    """A "summary" run in the sweep's W&B group: the frequency and metric tables and the chart."""
    import wandb

    settings = config.logger.wandb
    run = wandb.init(
        project=settings.project,
        group=sweep_dir.name,
        name=f"{sweep_dir.name}-summary",
        job_type="summary",
        dir=str(sweep_dir),
        mode="offline" if wandb_is_offline() else "online",
    )
    rows = [
        [
            group,
            key,
            value,
            count,
            summary["groups"][group]["frequencies"][key][value],
            *summary["groups"][group]["ci95"][key][value],
        ]
        for group, results in summary["groups"].items()
        for key, counts in results["counts"].items()
        for value, count in counts.items()
    ]
    run.log(
        {
            "summary/frequencies": wandb.Table(
                columns=["group", "result", "value", "count", "frequency", "ci95_low", "ci95_high"], data=rows
            ),
            "summary/metrics": wandb.Table(
                columns=["group", "metric", "mean", "ci95_low", "ci95_high", "std", "min", "max", "n"],
                data=[
                    [
                        group,
                        key,
                        stats["mean"],
                        *stats["ci95"],
                        stats["std"],
                        stats["min"],
                        stats["max"],
                        stats["n"],
                    ]
                    for group, results in summary["groups"].items()
                    for key, stats in results["metrics"].items()
                ],
            ),
            "summary/chart": wandb.Image(str(sweep_dir / "summary.png")),
        }
    )
    run.summary.update({"n_jobs": summary["n_jobs"], "n_failed": summary["n_failed"]})
    run.finish()

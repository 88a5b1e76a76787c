"""Entry point: `python -m src.run [group=option ...] [key=value ...]`.

Composes conf/config.yaml, trains, validates and tests one model, and leaves a self-contained run
folder: config.yaml (resolved), metrics.json, history.csv, figures (PNG), checkpoints/ and logs."""

from __future__ import annotations

import csv
import json
import os
import secrets
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from src import ood, plots
from src.models import ReconstructionModel, VariationalAutoencoder


def wandb_is_offline() -> bool:
    """True unless the user has configured W&B: WANDB_MODE=online, an API key, or `wandb login`."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode != "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return not (os.environ.get("WANDB_API_KEY") or logged_in)


# Lightning's own use of a deprecated torch API; nothing a user can act on.
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")

# The pid and a random suffix keep two jobs started in the same second out of each other's folders.
OmegaConf.register_new_resolver("run_id", lambda: f"{os.getpid()}{secrets.token_hex(2)}", use_cache=True)
OmegaConf.register_new_resolver("wandb_offline", wandb_is_offline)


class History(Callback):
    """Epoch-level metrics in history.csv, rewritten every epoch so a crash keeps what was done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.rows.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, **epoch_metrics(trainer)}
        )
        columns = list(dict.fromkeys(key for r in self.rows for key in r))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


@torch.no_grad()
def write_figures(
    model: ReconstructionModel, test_images: torch.Tensor, history: list, run_dir: Path
) -> list[Path]:
    """Inputs vs reconstructions, prior samples (VAE), the bottleneck distribution (latent <= 2)
    and the loss curves."""
    model.eval()
    shown = test_images[:8].to(model.device)
    figures = [
        plots.image_rows(
            [shown, model.reconstruct(shown)], ["input", "output"], run_dir / "reconstructions.png"
        )
    ]
    if isinstance(model, VariationalAutoencoder):
        samples = model.sample(64, generator=torch.Generator().manual_seed(0))
        figures.append(plots.image_grid(samples, run_dir / "samples.png", "decoded samples z ~ N(0, I)"))
    if model.hparams.latent_dim <= 2:
        images = test_images.to(model.device)
        sigmas = None
        if isinstance(model, VariationalAutoencoder):
            codes, logvar = model.encode(images)
            sigmas = (0.5 * logvar).exp()
        else:
            codes = model.code(images)
        figures.append(plots.bottleneck_distribution(codes, run_dir / "bottleneck.png", sigmas))
    if history:
        figures.append(plots.loss_curves(history, run_dir / "loss_curves.png"))
    return figures


def build(config: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, re-raising a constructor's own error (e.g. a bad config value) with
    its message intact instead of Hydra's nested wrappers."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        cause: BaseException = error
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise cause from None


def epoch_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The trainer's latest epoch-level train/val/test metrics, with Lightning's suffix removed."""
    return {
        key.removesuffix("_epoch"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(("train/", "val/", "test/")) and not key.endswith("_step")
    }


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, validate and test the configured model; write the run folder; return the metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data)
    model: ReconstructionModel = build(cfg.model)
    loggers = [build(logger_cfg, save_dir=str(run_dir)) for logger_cfg in cfg.logger.values()]
    history = History(run_dir / "history.csv")
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", save_last=True
    )
    trainer: pl.Trainer = build(
        cfg.trainer, logger=loggers or False, callbacks=[history, checkpoints], default_root_dir=str(run_dir)
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    metrics: dict[str, Any] = {"train/time_s": time.perf_counter() - started, **epoch_metrics(trainer)}
    if cfg.test:
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics.update(epoch_metrics(trainer))
        if cfg.get("ood") and cfg.ood.enabled and trainer.is_global_zero:
            metrics.update(ood.evaluate(cfg.ood, model, datamodule, run_dir))
    metrics.update(
        {
            "seed": cfg.seed,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    )
    if not trainer.is_global_zero:
        return metrics

    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    # The OOD evaluation's figures (ood_*.png) go to the loggers with the others.
    figures = write_figures(model, datamodule.images("test"), history.rows, run_dir)
    figures += sorted(run_dir.glob("ood_*.png"))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_metrics({key: value for key, value in metrics.items() if isinstance(value, float)})
            logger.log_image("figures", [str(path) for path in figures], caption=[p.stem for p in figures])
            logger.experiment.finish()
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except BaseException:
        # Keep the reason beside whatever the run already wrote (config, history, checkpoints).
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    # Returned for Hydra sweepers (e.g. Optuna), which optimise the validation loss.
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()

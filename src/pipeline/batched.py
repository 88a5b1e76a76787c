"""Many seeds of one small model trained in one process as one batched model.

Each member is the model a single run with that seed would build (same initial weights); the
members' parameters are stacked along a leading dimension and trained with `torch.func.vmap` over
`functional_call`. The optimisers used here (Adam, SGD, ...) update each element independently,
so every member follows its own trajectory, as it would alone; only floating-point summation order
differs. Full-batch training only: then every member sees exactly the data its single run sees."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from src.models.base import ReconstructionModel
from src.models.ca import ClassicalAutoencoder
from src.models.nets import DenseNet
from src.models.vae import VariationalAutoencoder
from src.pipeline.checkpoints import save_weights
from src.pipeline.config import build
from src.pipeline.process import prepare_training_process
from src.pipeline.run import Run
from src.pipeline.training import seeded_model

BATCHABLE_MODELS = (ClassicalAutoencoder, VariationalAutoencoder)


def batching_problem(cfg: DictConfig) -> str | None:
    """Why jobs with this config cannot train in the batched path, or None if they can."""
    if get_class(cfg.model._target_) not in BATCHABLE_MODELS:
        return f"model {cfg.model._target_} is not a CA or VAE"
    if get_class(cfg.model.net._target_) is not DenseNet:
        return "only dense nets are batched (batch norm keeps per-member running statistics)"
    if cfg.trainer.get("gradient_clip_val") or cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        return "gradient clipping or accumulation is set"
    datamodule = build(cfg.data)
    datamodule.setup()
    if datamodule.batch_size < len(datamodule.images("train")):
        return f"data.batch_size {datamodule.batch_size} is smaller than the training set (full batch only)"
    return None


class _Objective(nn.Module):
    """Calls the model's own training loss, so that functional_call can run it with member weights."""

    def __init__(self, model: ReconstructionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(images)[0]


def training_steps(cfg: DictConfig) -> int:
    """Optimizer steps of a full-batch single run: one per epoch, unless max_steps stops it first."""
    epochs, max_steps = cfg.trainer.max_epochs, cfg.trainer.get("max_steps", -1)
    return min(epochs, max_steps) if max_steps and max_steps > 0 else epochs


def train_members(cfgs: list[DictConfig]) -> tuple[list[ReconstructionModel], pl.LightningDataModule, float]:
    """Train one member per config (configs differ only in `seed`); return the trained models,
    the datamodule and the training time in seconds."""
    prepare_training_process()
    datamodule = build(cfgs[0].data)
    datamodule.setup()
    images = datamodule.images("train")
    models = [seeded_model(cfg) for cfg in cfgs]  # as a single run builds them
    params, buffers = stack_module_state(models)
    template = _Objective(models[0])
    member_params = {f"model.{name}": value for name, value in params.items()}
    member_buffers = {f"model.{name}": value for name, value in buffers.items()}
    optimizer = build(cfgs[0].model.optimizer, params=list(params.values()))

    def member_loss(weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(template, (weights, state), (images,))

    # Each member draws its own noise (the VAE's epsilon), as separate runs would.
    losses_of = vmap(member_loss, randomness="different")
    started = time.perf_counter()
    for _ in range(training_steps(cfgs[0])):
        optimizer.zero_grad(set_to_none=True)
        # Members are independent, so the gradient of the sum is each member's own gradient.
        losses_of(member_params, member_buffers).sum().backward()
        optimizer.step()
    elapsed = time.perf_counter() - started
    with torch.no_grad():
        for index, model in enumerate(models):
            for name, parameter in model.named_parameters():
                parameter.copy_(params[name][index])
    return models, datamodule, elapsed


@torch.no_grad()
def member_metrics(model: ReconstructionModel, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """The metrics a single run reports, from the same model method as its validation and test
    steps (`evaluation_metrics`), on the full splits (one batch each: full-batch training)."""
    model.eval()
    metrics: dict[str, Any] = {}
    for stage, split in (("train", "train"), ("val", "val"), ("test", "test")):
        values = model.evaluation_metrics(datamodule.images(split))
        keys = values if stage != "train" else [key for key in values if key in ("loss", "recon", "kl")]
        metrics.update({f"{stage}/{key}": float(values[key]) for key in keys})
    diverged = [key for key, value in metrics.items() if not torch.isfinite(torch.tensor(value))]
    if diverged:
        raise FloatingPointError(f"Training of this seed diverged: {', '.join(diverged)} not finite.")
    return metrics


def record_member(
    model: ReconstructionModel, datamodule: pl.LightningDataModule, train_time_s: float
) -> Callable[[DictConfig, Path], dict[str, Any]]:
    """A job (as `src.pipeline.run.run_job` runs it) that writes a trained member's run folder
    through the Run, as a single run would, and returns its metrics."""

    def write(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
        run = Run(cfg, run_dir)
        run.start()
        steps = training_steps(cfg)
        metrics = {
            "train/time_s": train_time_s,
            **member_metrics(model, datamodule),
            "seed": cfg.seed,
            "epochs": steps,
            "steps": steps,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        save_weights(model, run_dir / "checkpoints" / "last.ckpt", global_step=steps, epoch=steps)
        metrics["checkpoint"] = "checkpoints/last.ckpt"  # the weights every metric was measured on
        for logger in run.loggers:
            logger.log_metrics({key: value for key, value in metrics.items() if isinstance(value, float)})
            logger.save()
        return run.record(model, datamodule, metrics)

    return write

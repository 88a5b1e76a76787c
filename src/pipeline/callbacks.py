"""The project's Lightning callbacks (conf/callbacks/default.yaml builds them with the rest)."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from src.pipeline.process import Interrupted


def epoch_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The trainer's latest epoch-level train/val/test metrics, with Lightning's suffix removed."""
    return {
        key.removesuffix("_epoch"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(("train/", "val/", "test/")) and not key.endswith("_step")
    }


class History(Callback):
    """Epoch-level metrics in history.csv: kept in memory, written at most every few seconds and
    when training ends or fails, so a crash keeps what was done without O(epochs^2) rewriting.
    Adds the training throughput `train/images_per_s`: images over the seconds from the epoch's
    start to its last training batch's end (data loading included, validation excluded)."""

    def __init__(self, path: str | Path, write_every_s: float = 10.0) -> None:
        self.path = Path(path)
        self.write_every_s = write_every_s
        self.rows: list[dict[str, float]] = []
        self._written_at = time.monotonic()
        self._epoch_started = self._epoch_seconds = 0.0
        self._epoch_images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_images, self._epoch_seconds = 0, 0.0
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch_images += len(batch[0])
        if batch_idx + 1 >= trainer.num_training_batches:
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)  # once per epoch: queued kernels count
            self._epoch_seconds = time.perf_counter() - self._epoch_started

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **epoch_metrics(trainer)}
        if self._epoch_seconds > 0:
            row["train/images_per_s"] = self._epoch_images / self._epoch_seconds
        self.rows.append(row)
        if time.monotonic() - self._written_at > self.write_every_s:
            self.write()

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.write()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self.write()

    def write(self) -> None:
        if not self.rows:
            return
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        self._written_at = time.monotonic()


class RandomState(Callback):
    """Saves the python, numpy and torch random states in every checkpoint and restores them when a
    run resumes from it: the shuffling and the VAE's sampling then go on as in an uninterrupted run
    (Lightning restores weights, optimiser and loops, not the random streams)."""

    def state_dict(self) -> dict[str, Any]:
        # numpy's state as a tensor and plain numbers: torch.load(weights_only=True) refuses arrays.
        _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        random.setstate(state_dict["python"])
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt: the state after a finished training epoch, rewritten every
    `every_n_epochs` epochs whatever the validation did and always when training ends, so that a
    killed run resumes from a recent state (at most `every_n_epochs` old) and the run's metrics,
    measured on the final weights, belong to this file."""

    def __init__(self, dirpath: str | Path, filename: str = "last", every_n_epochs: int = 1) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # The final state, when the last epoch was not a multiple of every_n_epochs.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def holds_final_state(self, trainer: pl.Trainer) -> bool:
        """Whether the file was written at the trainer's current step (the weights in memory)."""
        return bool(self.best_model_path) and self._last_global_step_saved == trainer.global_step


class WhereInterrupted(Callback):
    """Notes on an interruption (`Interrupted`, from SIGTERM or SIGINT) the epoch and step training
    had reached, for the run's error.txt."""

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Interrupted):
            exception.epoch, exception.step = trainer.current_epoch, trainer.global_step

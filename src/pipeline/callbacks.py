"""The project's Lightning callbacks (conf/callbacks/default.yaml builds them with the rest)."""

from __future__ import annotations

import csv
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from src.files import atomic_path
from src.pipeline.checkpoints import save_checkpoint_file
from src.pipeline.process import Interrupted


def epoch_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The trainer's latest epoch-level train/val/test metrics, with Lightning's suffix removed."""
    return {
        key.removesuffix("_epoch"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(("train/", "val/", "test/")) and not key.endswith("_step")
    }


def history_stride(max_epochs: int | None, max_rows: int | None) -> int:
    """Every how many epochs a history keeps a row so that it has about `max_rows` rows: 1 (every
    epoch) when the run has no more epochs than that, when `max_rows` is null, or when the number
    of epochs is open (max_epochs -1 or null)."""
    if not max_rows or max_epochs is None or max_epochs < 0:
        return 1
    return max(1, math.ceil(max_epochs / max_rows))


def keeps_epoch(epoch: int, stride: int, max_epochs: int | None, validate_every: int | None) -> bool:
    """Whether a thinned history keeps `epoch`: every `stride`-th epoch from the first, every epoch
    that validated (every `validate_every`-th), and the last."""
    return (
        epoch % stride == 0
        or (bool(validate_every) and (epoch + 1) % validate_every == 0)
        or (max_epochs is not None and epoch == max_epochs - 1)
    )


class History(Callback):
    """Epoch-level metrics in history.csv: kept in memory, written at most every few seconds and
    when training ends or fails, so a crash keeps what was done without O(epochs^2) rewriting.
    A run of more than `max_rows` epochs keeps every k-th epoch's row (`history_stride`), every
    validated epoch's and the last (thousands of full-batch epochs would otherwise fill a sweep
    with rows nobody reads). Adds the training throughput `train/images_per_s`: images over the
    seconds from the epoch's start to its last training batch's end (data loading included,
    validation excluded). The rows are kept in every checkpoint and restored when a run resumes
    from one, so that a resumed run's history.csv holds the epochs before its interruption too."""

    def __init__(self, path: str | Path, write_every_s: float = 10.0, max_rows: int | None = 100) -> None:
        self.path = Path(path)
        self.write_every_s = write_every_s
        self.max_rows = max_rows
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
        stride = history_stride(trainer.max_epochs, self.max_rows)
        if not keeps_epoch(
            trainer.current_epoch, stride, trainer.max_epochs, trainer.check_val_every_n_epoch
        ):
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

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    def write(self) -> None:
        write_history(self.path, self.rows)
        self._written_at = time.monotonic()


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """history.csv: one row per kept epoch, the union of the rows' keys as columns, floats to nine
    significant digits (nothing is written when there are no rows)."""
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        # Nine significant digits give back every float32 exactly (the metrics are float32 means).
        writer.writerows(
            {key: f"{value:.9g}" if isinstance(value, float) else value for key, value in row.items()}
            for row in rows
        )


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

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Only the epochs that save do ModelCheckpoint's work (it gathers the logged metrics first,
        # which thousands of one-step epochs would pay for nothing).
        if (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            super().on_train_epoch_end(trainer, module)

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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writing through `save_checkpoint_file` (Lightning's own writes to the
    system's temporary folder and moves the file, a copy when the run folder is on another file
    system). Given to every Trainer the project builds."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_checkpoint_file(checkpoint, Path(path))

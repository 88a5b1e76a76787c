"""The lean training log: Lightning's `self.log` is slow next to a small model's step
(docs/performance.md), so the training terms are summed on the device and written straight to the
loggers. Every use of Lightning internals in training is here."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class TrainingTermsLog(pl.LightningModule):
    """Mixin of the Lightning module that trains the models (lightning_module.py):
    `log_training_terms` once per step, plus the step predicates that its NaN checks share with it."""

    def __init__(self) -> None:
        super().__init__()
        # The running sums of the training terms over the epoch so far.
        self._epoch_sums: torch.Tensor | None = None
        self._epoch_images = 0

    def on_train_epoch_start(self) -> None:
        self._epoch_sums, self._epoch_images = None, 0

    def is_log_step(self) -> bool:
        """Whether the loggers write this training step (every trainer.log_every_n_steps): Lightning's
        own test (an internal, stable since 1.x), so logs and NaN checks agree with its step logs."""
        return self.trainer._logger_connector.should_update_logs

    def is_last_batch(self, batch_idx: int) -> bool:
        return batch_idx + 1 >= self.trainer.num_training_batches

    def should_check_loss(self, batch_idx: int) -> bool:
        """Whether this step checks its loss for NaN: always on a CPU, where the check is free; on an
        accelerator, where it is a host synchronisation, on the log steps (when Lightning syncs
        anyway) and at each epoch's last batch, before any checkpoint."""
        if self.device.type == "cpu" or self._trainer is None:
            return True
        return self.is_log_step() or self.is_last_batch(batch_idx)

    def log_training_terms(
        self, terms: dict[str, torch.Tensor | float], batch_size: int, batch_idx: int
    ) -> None:
        """`train/<name>_step` on the steps the loggers write and `train/<name>_epoch`, the
        image-weighted epoch mean, at the epoch's last batch. The sums stay on the device."""
        values = torch.stack(
            [torch.as_tensor(value, device=self.device).detach() for value in terms.values()]
        ).float()
        if self._epoch_sums is None:
            self._epoch_sums = values * batch_size
        else:
            self._epoch_sums.add_(values, alpha=batch_size)
        self._epoch_images += batch_size
        if self.is_log_step():
            # Lightning's own writer of step logs (an internal, stable since 1.x): the same rows,
            # steps and `epoch` column as self.log(on_step=True) gives.
            step_values = dict(zip(terms, values.tolist(), strict=True))
            self.trainer._logger_connector.log_metrics(
                {f"train/{name}_step": value for name, value in step_values.items()}
            )
            if self.trainer.progress_bar_callback is not None and "loss" in terms:
                loss = values[list(terms).index("loss")]
                self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        if self.is_last_batch(batch_idx):
            means = self._epoch_sums / self._epoch_images
            for name, value in zip(terms, means, strict=True):
                self.log(
                    f"train/{name}_epoch", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True
                )

"""A Lightning callback for the callbacks-group tests: it appends the epoch number to a file at the
end of every training epoch, so a test can tell that a callback given by config really ran."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class EpochProbe(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{trainer.current_epoch}\n")

"""A Lightning callback for the W&B tests: the job whose seed is `fail_seed` fails at the end of its
first training epoch, after its loggers have started."""

from __future__ import annotations

import pytorch_lightning as pl


class FailOnSeed(pl.Callback):
    def __init__(self, seed: int, fail_seed: int) -> None:
        self.seed, self.fail_seed = seed, fail_seed

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.seed == self.fail_seed:
            raise RuntimeError(f"seed {self.seed} fails on purpose")

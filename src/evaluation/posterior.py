"""Statistics of a model's bottleneck over a split (report 000 quotes the VAE's over its training
set): whatever the model's `latent_statistics` reports, as `<split>/<name>`."""

from __future__ import annotations

import torch

from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.models.base import ReconstructionModel


class LatentStatistics:
    """The `latent_statistics` evaluation on the first `max_images` images of `split` (enough for
    these statistics, cheap on MNIST)."""

    def __init__(self, split: str = "train", max_images: int | None = 2000) -> None:
        self.split, self.max_images = split, max_images

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        images = datamodule.images(self.split)[: self.max_images].to(model.device)
        statistics = model.latent_statistics(images)
        return EvaluationResult({f"{self.split}/{key}": value for key, value in statistics.items()})

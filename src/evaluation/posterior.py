"""Statistics of a model's bottleneck over a split (report 000 quotes the VAE's over its training
set): whatever the model's `latent_statistics` reports, as `<split>/<name>`."""

from __future__ import annotations

import torch

from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.models.base import ReconstructionModel


def _plain(value: torch.Tensor) -> float | int:
    return int(value) if not value.is_floating_point() else float(value)


class LatentStatistics:
    """The `latent_statistics` evaluation on the first `max_images` images of `split` (enough for
    these statistics, cheap on MNIST)."""

    def __init__(self, split: str = "train", max_images: int | None = 2000) -> None:
        self.split, self.max_images = split, max_images

    def _images(self, datamodule: InMemoryDataModule, device: torch.device) -> torch.Tensor:
        return datamodule.images(self.split)[: self.max_images].to(device)

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        statistics = model.latent_statistics(self._images(datamodule, model.device))
        return EvaluationResult({f"{self.split}/{key}": _plain(value) for key, value in statistics.items()})

    @torch.no_grad()
    def evaluate_members(
        self, members: MemberSet, datamodule: InMemoryDataModule, contexts: list[EvaluationContext]
    ) -> list[EvaluationResult]:
        images = self._images(datamodule, members.final.device)
        statistics = members.final.call_grouped(ReconstructionModel.latent_statistics, images)
        columns = {key: values.tolist() for key, values in statistics.items()}
        return [
            EvaluationResult({f"{self.split}/{key}": values[index] for key, values in columns.items()})
            for index in range(len(contexts))
        ]

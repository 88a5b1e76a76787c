"""Report 000's trick: the same trained model evaluated with sigmoid and with Heaviside outputs."""

from __future__ import annotations

import torch

from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.models.base import OUTPUT_ACTIVATIONS, ReconstructionModel
from src.reporting.figures import drawn, image_rows


class HeavisideComparison:
    """The `heaviside` evaluation: `test/<activation>/<score>` for each output activation on the
    test split, and heaviside.png (inputs, sigmoid and Heaviside outputs of `shown` images)."""

    def __init__(self, shown: int = 8) -> None:
        self.shown = shown

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        images = datamodule.images("test").to(model.device)
        metrics, rows = {}, [images[: self.shown]]
        for activation in OUTPUT_ACTIVATIONS:
            scores = model.scores(images, activation=activation)
            metrics.update(
                {f"test/{activation}/{name}": value.mean().item() for name, value in scores.items()}
            )
            rows.append(model.reconstruct(images[: self.shown], activation))
        if not context.figures:
            return EvaluationResult(metrics)
        return EvaluationResult(
            metrics,
            drawn(
                [lambda: image_rows(rows, ["input", *OUTPUT_ACTIVATIONS], context.run_dir / "heaviside.png")],
                context.run_dir,
            ),
        )

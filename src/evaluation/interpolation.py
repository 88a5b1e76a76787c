"""Report 004 observes that the VAE's latent space "has a continuous structure that allows for
interpolation between different digit classes". The `interpolation` evaluation draws it
(interpolation.png): for class c = 0 .. pairs-1, the first test image of class c and the first of
class c + 1, their codes (the VAE's posterior means) joined by a straight line, and the decoded
images at `steps` evenly spaced points of it, the two inputs at the ends. With it,
`test/interpolation/path_cosine` measures how gradual the path is: the mean cosine similarity of
consecutive decoded images (1: no step changes the image)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics.functional.regression import cosine_similarity

from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.models.base import ReconstructionModel
from src.reporting.figures import drawn, image_rows


def interpolate(
    model: ReconstructionModel, first: torch.Tensor, second: torch.Tensor, steps: int
) -> torch.Tensor:
    """The images (steps, C, H, W) decoded along the straight line from the code of `first` to the
    code of `second` (each (C, H, W))."""
    codes = model.code(torch.stack([first, second]))
    weights = torch.linspace(0, 1, steps, device=codes.device)[:, None]
    return model.output(model.decode((1 - weights) * codes[0] + weights * codes[1]))


class LatentInterpolation:
    """The `interpolation` evaluation (module docstring) on the test split."""

    def __init__(self, pairs: int = 8, steps: int = 10) -> None:
        self.pairs, self.steps = pairs, steps

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        model.eval()
        images, labels = datamodule.images("test").to(model.device), datamodule.labels("test")
        classes = sorted(set(labels.tolist()))
        first = {c: int((labels == c).nonzero()[0]) for c in classes}
        pairs = [(classes[i], classes[i + 1]) for i in range(min(self.pairs, len(classes) - 1))]
        paths = [interpolate(model, images[first[a]], images[first[b]], self.steps) for a, b in pairs]
        cosines = [
            cosine_similarity(path[:-1].flatten(1), path[1:].flatten(1), reduction="mean") for path in paths
        ]
        metrics = {"test/interpolation/path_cosine": float(torch.stack(cosines).mean())}
        if not context.figures:
            return EvaluationResult(metrics)
        rows = [
            torch.cat([images[first[a]][None], path, images[first[b]][None]]).cpu()
            for (a, b), path in zip(pairs, paths, strict=True)
        ]
        titles = [f"{a} -> {b}" for a, b in pairs]

        def figure() -> Path:
            return image_rows(rows, titles, context.run_dir / "interpolation.png")

        return EvaluationResult(metrics, drawn([figure], context.run_dir))

"""Report 004 finds its VAE's test loss lower than its training loss. The training loss a run logs
is the mean over an epoch, taken while the weights still move and in training mode (batch-norm
batch statistics); the test loss comes at the end of the epoch, in evaluation mode. The
`split_losses` evaluation removes both differences: the model's own objective and its terms at the
final weights, in evaluation mode, on the same number of images of each split, each split drawing
the same noise (`splits/<split>/<term>`). Beside it, metrics.json keeps the logged `train/loss`
of the last epoch and `test/loss`."""

from __future__ import annotations

import torch

from src.data.memory import InMemoryDataModule
from src.data.ood_sets import evenly_spaced
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.models.base import ReconstructionModel

SPLITS = ("train", "val", "test")


class SplitLosses:
    """The `split_losses` evaluation on `max_images` images of each split (evenly spaced), in batches
    of `batch_size`, with the random draws of every split starting from `seed`."""

    def __init__(self, max_images: int | None = 10000, batch_size: int = 500, seed: int = 0) -> None:
        self.max_images, self.batch_size, self.seed = max_images, batch_size, seed

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        model.eval()
        splits = {split: datamodule.images(split) for split in SPLITS}
        # The same number of images everywhere: the smallest split's, at most max_images.
        count = min(len(images) for images in splits.values())
        count = min(count, self.max_images) if self.max_images else count
        metrics: dict[str, float] = {"splits/images": count}
        devices = [model.device] if model.device.type == "cuda" else []
        for split, images in splits.items():
            totals: dict[str, float] = {}
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for batch in evenly_spaced(images, count).split(self.batch_size):
                    loss, terms = model.training_loss(batch.to(model.device))
                    for name, value in {"loss": loss, **terms}.items():
                        totals[name] = totals.get(name, 0.0) + float(value) * len(batch)
            metrics.update({f"splits/{split}/{name}": total / count for name, total in totals.items()})
        return EvaluationResult(metrics)

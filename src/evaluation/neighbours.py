"""Model-free baselines from the training images themselves: an image's Euclidean pixel distance to
its k-th nearest training image (`pixel_knn`), and a local outlier factor (`pixel_lof`; after
Breunig et al. 2000): that distance over the mean k-th neighbour distance of its k nearest
training images. (The simplified LOF of Schubert et al. 2014 takes the mean of the k ratios
instead of the ratio to the mean.) The ratio keeps images of a dense region (the
simple 1s of MNIST, whose flips lie close to many training 1s) from looking typical merely for
having many neighbours. A detector worth its cost should beat both."""

from __future__ import annotations

import torch

# The scores this module adds.
NEIGHBOUR_SCORES = ("pixel_knn", "pixel_lof")
# Distances are computed for this many query images at a time (memory: batch x reference images).
QUERY_BATCH = 1000
# A local density can be infinite where k training images coincide: the denominator's floor.
DISTANCE_FLOOR = 1e-12


class TrainingNeighbours:
    """The k nearest of `reference` images (N, ...) to any image, by Euclidean pixel distance."""

    def __init__(self, reference: torch.Tensor, k: int) -> None:
        if not 1 <= k < len(reference):
            raise ValueError(f"k must be between 1 and {len(reference) - 1} (the reference images less one)")
        self.reference, self.k = reference.flatten(1).double(), k
        # Each reference image's own k-distance, itself left out (its distance 0 comes first).
        self.reference_kdistance = self._nearest(self.reference, skip=1)[0][:, -1]

    def _nearest(self, queries: torch.Tensor, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        distances, indices = [], []
        for batch in queries.split(QUERY_BATCH):
            values, index = torch.cdist(batch, self.reference).topk(self.k + skip, largest=False)
            distances.append(values[:, skip:])
            indices.append(index[:, skip:])
        return torch.cat(distances), torch.cat(indices)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`pixel_knn` and `pixel_lof` of each image (float64 tensors (N,), higher = more anomalous)."""
        distances, indices = self._nearest(images.flatten(1).double().to(self.reference.device))
        kdistance = distances[:, -1]
        local = self.reference_kdistance[indices].mean(1).clamp_min(DISTANCE_FLOOR)
        return {"pixel_knn": kdistance.cpu(), "pixel_lof": (kdistance / local).cpu()}

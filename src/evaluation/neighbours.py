"""Model-free baselines from the training images themselves: an image's Euclidean pixel distance to
its k-th nearest training image (`pixel_knn`), and a local outlier factor (`pixel_lof`; after
Breunig et al. 2000): that distance over the mean k-th neighbour distance of its k nearest
training images. (The simplified LOF of Schubert et al. 2014 takes the mean of the k ratios
instead of the ratio to the mean.) The ratio keeps images of a dense region (the
simple 1s of MNIST, whose flips lie close to many training 1s) from looking typical merely for
having many neighbours. A detector worth its cost should beat both."""

from __future__ import annotations

import hashlib

import torch

# The scores this module adds.
NEIGHBOUR_SCORES = ("pixel_knn", "pixel_lof")
# Distances are computed for this many query images at a time (memory: batch x reference images).
QUERY_BATCH = 1000
# A local density can be infinite where k training images coincide: the denominator's floor.
DISTANCE_FLOOR = 1e-12


# Searches kept in a process (`shared_neighbours`), and the image sets each keeps the scores of.
KEPT_REFERENCES, KEPT_SETS = 2, 32
_SHARED: dict[bytes, TrainingNeighbours] = {}


def _fingerprint(images: torch.Tensor) -> bytes:
    """The identity of a set of images by content (their values and shape)."""
    values = images.detach().contiguous().cpu()
    return hashlib.sha1(values.numpy().tobytes() + str(tuple(values.shape)).encode()).digest()


def shared_neighbours(reference: torch.Tensor, k: int) -> TrainingNeighbours:
    """The search of `reference` for k neighbours, built once per distinct reference in a process:
    the members of a batched sweep (and the jobs of a sweep in one process) search the same
    training images for the same sets, which costs far more than any member's own scores."""
    key = _fingerprint(reference) + str(k).encode()
    if key not in _SHARED:
        if len(_SHARED) >= KEPT_REFERENCES:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = TrainingNeighbours(reference, k)
    return _SHARED[key]


class TrainingNeighbours:
    """The k nearest of `reference` images (N, ...) to any image, by Euclidean pixel distance; the
    scores of the last few image sets it was given are kept (by content)."""

    def __init__(self, reference: torch.Tensor, k: int) -> None:
        if not 1 <= k < len(reference):
            raise ValueError(f"k must be between 1 and {len(reference) - 1} (the reference images less one)")
        self.reference, self.k = reference.flatten(1).double(), k
        # Each reference image's own k-distance, itself left out (its distance 0 comes first).
        self.reference_kdistance = self._nearest(self.reference, skip=1)[0][:, -1]
        self._scored: dict[bytes, dict[str, torch.Tensor]] = {}

    def _nearest(self, queries: torch.Tensor, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        distances, indices = [], []
        for batch in queries.split(QUERY_BATCH):
            values, index = torch.cdist(batch, self.reference).topk(self.k + skip, largest=False)
            distances.append(values[:, skip:])
            indices.append(index[:, skip:])
        return torch.cat(distances), torch.cat(indices)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`pixel_knn` and `pixel_lof` of each image (float64 tensors (N,), higher = more anomalous)."""
        key = _fingerprint(images)
        if key not in self._scored:
            if len(self._scored) >= KEPT_SETS:
                self._scored.pop(next(iter(self._scored)))
            distances, indices = self._nearest(images.flatten(1).double().to(self.reference.device))
            kdistance = distances[:, -1]
            local = self.reference_kdistance[indices].mean(1).clamp_min(DISTANCE_FLOOR)
            self._scored[key] = {"pixel_knn": kdistance.cpu(), "pixel_lof": (kdistance / local).cpu()}
        return {name: values.clone() for name, values in self._scored[key].items()}

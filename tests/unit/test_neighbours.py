"""The model-free neighbour baselines on reference images whose distances are known."""

from __future__ import annotations

import pytest
import torch

from src.evaluation.neighbours import TrainingNeighbours


def _constant_images(values: list[float]) -> torch.Tensor:
    # Constant 2x2 images: the distance between values a and b is 2 |a - b|.
    return torch.tensor(values, dtype=torch.float64)[:, None, None, None].expand(-1, 1, 2, 2)


def test_knn_distance_and_local_outlier_factor_on_known_points() -> None:
    neighbours = TrainingNeighbours(_constant_images([0.0, 0.1, 0.2, 0.3, 0.4]), k=1)
    # Every reference image's nearest other image is 0.1 away: k-distance 0.2.
    assert neighbours.reference_kdistance.tolist() == pytest.approx([0.2] * 5)
    scores = neighbours(_constant_images([0.45, 0.9, 0.2]))
    assert scores["pixel_knn"].tolist() == pytest.approx([0.1, 1.0, 0.0])
    assert scores["pixel_lof"].tolist() == pytest.approx([0.5, 5.0, 0.0])


def test_the_local_factor_discounts_a_dense_region() -> None:
    """A query near a tight cluster gets a higher local factor than one farther from a loose
    cluster, though its distance is the smaller."""
    reference = _constant_images([0.0, 0.01, 0.02, 0.5, 0.6, 0.7])
    neighbours = TrainingNeighbours(reference, k=2)
    scores = neighbours(_constant_images([0.07, 0.85]))  # 0.05 past 0.02; 0.15 past 0.7
    assert scores["pixel_knn"][0] < scores["pixel_knn"][1]
    assert scores["pixel_lof"][0] > scores["pixel_lof"][1]
    with pytest.raises(ValueError, match="between 1 and 5"):
        TrainingNeighbours(reference, k=6)

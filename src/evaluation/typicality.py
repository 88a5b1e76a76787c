"""DoSE (Morningstar et al. 2021): an image is out of distribution when its summary statistics
are atypical of in-distribution data. One Gaussian kernel density per statistic (a model's
per-image scores: reconstruction errors, KL, negative ELBO, ...) is fitted on the in-distribution
validation images; the `dose` score is the negative sum of the log densities, higher = more
anomalous. Each validation image is scored by the densities of the other half of the validation
set (two folds), so that the threshold chosen on validation scores sees no image it was fitted on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import gaussian_kde

# Scores that are no statistic of the model's fit to an image.
NOT_STATISTICS = ("png_bits", "dose")
# The densities are fitted on at most this many validation images (evenly spaced): their cost grows
# with the product of fitted and scored images.
MAX_FITTED = 2000


def default_statistics(scores: Mapping[str, torch.Tensor]) -> list[str]:
    """Every model score in `scores` (the input-complexity twins and PNG length left out)."""
    return [name for name in scores if name not in NOT_STATISTICS and not name.endswith("_ic")]


class Typicality:
    """The densities of `statistics` over `validation` scores (one tensor (N,) per name; at most
    MAX_FITTED of them). A statistic with no spread there (e.g. the KL of a collapsed posterior)
    is left out."""

    def __init__(self, validation: Mapping[str, torch.Tensor], statistics: Sequence[str]) -> None:
        missing = [name for name in statistics if name not in validation]
        if missing:
            raise KeyError(f"no validation scores for {missing}")
        count = len(validation[statistics[0]]) if statistics else 0
        kept = torch.linspace(0, count - 1, min(count, MAX_FITTED)).round().long() if count else None
        self.densities = {
            name: gaussian_kde(validation[name].double()[kept].numpy())
            for name in statistics
            if float(validation[name].double()[kept].std()) > 0
        }

    def __call__(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-sum of the log densities of each image's statistics (float64, shape (N,))."""
        total = np.zeros(len(next(iter(scores.values()))))
        for name, density in self.densities.items():
            total += density.logpdf(scores[name].double().numpy())
        return torch.from_numpy(-total)


def dose_scores(
    validation: Mapping[str, torch.Tensor],
    sets: Mapping[str, Mapping[str, torch.Tensor]],
    statistics: Sequence[str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The `dose` score of the validation images (two folds, each scored by the other's densities)
    and of each other set (scored by the densities of all validation images)."""
    statistics = list(statistics) if statistics is not None else default_statistics(validation)
    count = len(next(iter(validation.values())))
    folds = [torch.arange(count) % 2 == fold for fold in (0, 1)]
    cross_fitted = torch.empty(count, dtype=torch.float64)
    for fitted_on, scored in (folds, folds[::-1]):
        fit = Typicality({name: validation[name][fitted_on] for name in statistics}, statistics)
        cross_fitted[scored] = fit({name: validation[name][scored] for name in statistics})
    fit = Typicality(validation, statistics)
    return cross_fitted, {name: fit(scores) for name, scores in sets.items()}

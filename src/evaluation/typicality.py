"""DoSE (Morningstar et al. 2021): an image is out of distribution when its summary statistics
are atypical of in-distribution data. One Gaussian kernel density per statistic (a model's
per-image scores: reconstruction errors, KL, negative ELBO, ...) is fitted on the in-distribution
validation images; the `dose` score is the negative sum of the log densities, higher = more
anomalous. The validation images are split into two folds: each validation image is scored by the
other fold's densities, so that the threshold chosen on validation scores sees no image it was
fitted on, and every other image by the mean of the two folds' (the same estimator)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.stats import gaussian_kde

# Scores that are no statistic of the model's fit to an image.
NOT_STATISTICS = ("png_bits", "pixel_knn", "pixel_lof", "dose")
# The densities are fitted on at most this many validation images (evenly spaced): their cost grows
# with the product of fitted and scored images.
MAX_FITTED = 2000
# Images whose log densities are computed at a time (memory: this many x fitted images).
SCORED_BATCH = 4096


def default_statistics(scores: Mapping[str, torch.Tensor]) -> list[str]:
    """Every model score in `scores` (the input-complexity twins and PNG length left out)."""
    return [name for name in scores if name not in NOT_STATISTICS and not name.endswith("_ic")]


class Typicality:
    """The densities of `statistics` over `validation` scores (one tensor (N,) per name; at most
    MAX_FITTED of them, evenly spaced). A statistic too close to constant for a kernel density
    (its covariance singular) is left out."""

    def __init__(self, validation: Mapping[str, torch.Tensor], statistics: Sequence[str]) -> None:
        missing = [name for name in statistics if name not in validation]
        if missing:
            raise KeyError(f"no validation scores for {missing}")
        count = len(validation[statistics[0]])
        kept = torch.linspace(0, count - 1, min(count, MAX_FITTED)).round().long()
        # name -> (fitted values, kernel variance): scipy chooses the bandwidth (Scott's rule) and
        # refuses a singular one; the densities are evaluated in torch, which is several times faster.
        self.densities: dict[str, tuple[torch.Tensor, float]] = {}
        for name in statistics:
            fitted = validation[name].double()[kept]
            try:
                variance = float(gaussian_kde(fitted.numpy()).covariance[0, 0])
            except np.linalg.LinAlgError:  # (nearly) constant here: no density to fit, no evidence
                continue
            self.densities[name] = (fitted, variance)

    def __call__(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-sum of the log densities of each image's statistics (float64, shape (N,))."""
        total = torch.zeros(len(next(iter(scores.values()))), dtype=torch.float64)
        for name, (fitted, variance) in self.densities.items():
            total += log_density(fitted, variance, scores[name].double().cpu())
        return -total


def log_density(fitted: torch.Tensor, variance: float, values: torch.Tensor) -> torch.Tensor:
    """The log of the Gaussian kernel density of `fitted` points (kernel variance `variance`, equal
    weights) at each of `values`, as scipy's gaussian_kde.logpdf computes it (a stable logsumexp)."""
    scale = (0.5 / variance) ** 0.5
    centres = fitted * scale
    constant = -0.5 * math.log(2 * math.pi * variance) - math.log(len(fitted))
    densities = torch.empty_like(values)
    for start in range(0, len(values), SCORED_BATCH):
        exponents = (values[start : start + SCORED_BATCH, None] * scale - centres).square_()
        nearest = exponents.amin(1, keepdim=True)
        sums = exponents.sub_(nearest).neg_().exp_().sum(1)
        densities[start : start + SCORED_BATCH] = sums.log_() - nearest[:, 0] + constant
    return densities


def spread_statistics(validation: Mapping[str, torch.Tensor], statistics: Sequence[str] | None) -> list[str]:
    """The statistics to model: `statistics` (default: every model score), less those without
    spread over the validation images (e.g. the KL of a collapsed posterior), which no density fits."""
    chosen = list(statistics) if statistics is not None else default_statistics(validation)
    return [name for name in chosen if float(validation[name].double().std()) > 0]


def dose_scores(
    validation: Mapping[str, torch.Tensor],
    sets: Mapping[str, Mapping[str, torch.Tensor]],
    statistics: Sequence[str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The `dose` score of the validation images and of each other set, all by the same estimator:
    the validation images are split into two folds, each validation image is scored by the other
    fold's densities, and every other image by the mean of the two folds' (so that a threshold on
    validation scores means the same on test images)."""
    chosen = spread_statistics(validation, statistics)
    count = len(next(iter(validation.values())))
    folds = [torch.arange(count) % 2 == fold for fold in (0, 1)]
    fits = [Typicality({name: validation[name][fold] for name in chosen}, chosen) for fold in folds]
    cross_fitted = torch.empty(count, dtype=torch.float64)
    for fit, other_fold in zip(fits, folds[::-1], strict=True):
        cross_fitted[other_fold] = fit({name: validation[name][other_fold] for name in chosen})
    return cross_fitted, {name: (fits[0](scores) + fits[1](scores)) / 2 for name, scores in sets.items()}

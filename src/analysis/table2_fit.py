"""Which threshold reproduces report 004's Table 2? Given a run's per-image scores of the
in-distribution test set and of an OOD set, every threshold is tried (each distinct score), and the
one whose six numbers (precision, recall, F1 of label 0 then label 1) come closest to the report's,
by the largest absolute difference, is returned with the share of validation scores below it
(the percentile a validation threshold would need)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.reporting.tables import read_scores_csv

# Report 004's Table 2: label 0 (MNIST) precision, recall, F1; label 1 (Fashion-MNIST) the same.
REPORT_TABLE2 = (0.91, 0.99, 0.94, 0.98, 0.90, 0.94)


@dataclass
class Table2Fit:
    deviation: float
    threshold: float
    validation_percentile: float
    numbers: tuple[float, ...]


def six_numbers(inside: np.ndarray, outside: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Table 2's six numbers (rows) at each threshold (columns); an image is called OOD when its
    score is above the threshold."""
    inside, outside = np.sort(inside), np.sort(outside)
    kept_in = np.searchsorted(inside, thresholds, side="right")  # in-distribution called in
    missed_out = np.searchsorted(outside, thresholds, side="right")  # OOD called in
    caught_out, flagged_in = len(outside) - missed_out, len(inside) - kept_in
    with np.errstate(divide="ignore", invalid="ignore"):
        precision_in = np.nan_to_num(kept_in / (kept_in + missed_out))
        recall_in = kept_in / len(inside)
        precision_out = np.nan_to_num(caught_out / (caught_out + flagged_in))
        recall_out = caught_out / len(outside)
        f1_in = np.nan_to_num(2 * precision_in * recall_in / (precision_in + recall_in))
        f1_out = np.nan_to_num(2 * precision_out * recall_out / (precision_out + recall_out))
    return np.stack([precision_in, recall_in, f1_in, precision_out, recall_out, f1_out])


def closest_threshold(
    inside: np.ndarray, outside: np.ndarray, validation: np.ndarray, target: tuple[float, ...] = REPORT_TABLE2
) -> Table2Fit:
    """The threshold whose six numbers are nearest `target` (largest absolute difference)."""
    thresholds = np.unique(np.concatenate([inside, outside]))
    numbers = six_numbers(inside, outside, thresholds)
    deviations = np.abs(numbers - np.asarray(target)[:, None]).max(0)
    best = int(deviations.argmin())
    threshold = float(thresholds[best])
    return Table2Fit(
        deviation=float(deviations[best]),
        threshold=threshold,
        validation_percentile=float((validation <= threshold).mean() * 100),
        numbers=tuple(float(value) for value in numbers[:, best]),
    )


def fit_run(run_dir: Path, score: str, ood_set: str) -> Table2Fit:
    """`closest_threshold` on a run folder's scores.csv, for one score and one OOD set."""
    scores = read_scores_csv(run_dir / "scores.csv")
    values = {name: np.asarray(columns[score], dtype=float) for name, columns in scores.items()}
    return closest_threshold(values["test"], values[ood_set], values["val"])

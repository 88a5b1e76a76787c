"""Anomaly/OOD decisions and their metrics: thresholds from in-distribution validation scores,
AUROC, AUPR, FPR at 95% TPR, and precision/recall/F1 of both classes (torchmetrics)."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity_at_sensitivity,
)

from src.errors import ConfigValueError

THRESHOLD_METHODS = ("percentile", "fixed", "best_f1")


def unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """Scores mapped monotonically into [0, 1] in float64: torchmetrics applies a sigmoid to
    predictions outside [0, 1], which would squash large scores (e.g. 300 nats) into ties."""
    scores = scores.double()
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else torch.zeros_like(scores)


def labelled(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([in_scores.double(), ood_scores.double()])
    labels = torch.cat([torch.zeros(len(in_scores)), torch.ones(len(ood_scores))]).long()
    return scores, labels


def percentile_threshold(validation_scores: torch.Tensor, percentile: float) -> float:
    """The `percentile`-th percentile (linear interpolation) of in-distribution validation scores."""
    if not 0 <= percentile <= 100:  # nan included
        raise ConfigValueError(f"ood.threshold.percentile must be in [0, 100], got {percentile}")
    return float(torch.quantile(validation_scores.double(), percentile / 100))


def best_f1_threshold(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """The threshold that maximises the OOD class's F1 on these labelled scores. It uses the OOD
    labels, so what it gives is an upper bound on a real detector, never a detector."""
    scores, labels = labelled(in_scores, ood_scores)
    ordered, order = scores.sort(descending=True)
    hits = labels[order].double()
    true_pos, false_pos = hits.cumsum(0), (1 - hits).cumsum(0)
    f1 = 2 * true_pos / (true_pos + false_pos + hits.sum())  # 2TP / (2TP + FP + FN)
    # Flagging the first i + 1 scores is a threshold only where the next score is lower (ties go together).
    f1[:-1][ordered[1:] == ordered[:-1]] = -1
    best = int(f1.argmax())
    # score > ordered[best + 1] flags exactly the first best + 1 scores.
    return float(ordered[best + 1]) if best + 1 < len(ordered) else float(ordered[-1] - 1)


def fpr_at_tpr(in_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """False positive rate (in-distribution flagged as OOD) at the first ROC point whose true
    positive rate (OOD flagged) reaches `tpr`."""
    scores, labels = labelled(in_scores, ood_scores)
    specificity, _ = binary_specificity_at_sensitivity(unit_interval(scores), labels, min_sensitivity=tpr)
    return 1.0 - float(specificity)


def auroc(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Area under the ROC curve with OOD as the positive class (0.5: no separation, 1: perfect)."""
    scores, labels = labelled(in_scores, ood_scores)
    return float(binary_auroc(unit_interval(scores), labels))


def detection_metrics(
    in_scores: torch.Tensor, ood_scores: torch.Tensor, threshold: float
) -> dict[str, float]:
    """AUROC, AUPR and FPR95 with OOD as the positive class, and precision, recall and F1 of both
    classes when images scoring above `threshold` are called OOD."""
    scores, labels = labelled(in_scores, ood_scores)
    flagged = (scores > threshold).long()
    unit = unit_interval(scores)
    return {
        "auroc": auroc(in_scores, ood_scores),
        "aupr": float(binary_average_precision(unit, labels)),
        "fpr95": fpr_at_tpr(in_scores, ood_scores),
        "precision_in": float(binary_precision(1 - flagged, 1 - labels)),
        "recall_in": float(binary_recall(1 - flagged, 1 - labels)),
        "f1_in": float(binary_f1_score(1 - flagged, 1 - labels)),
        "precision_ood": float(binary_precision(flagged, labels)),
        "recall_ood": float(binary_recall(flagged, labels)),
        "f1_ood": float(binary_f1_score(flagged, labels)),
    }


def choose_threshold(
    method: str,
    validation_scores: torch.Tensor,
    percentile: float = 99.0,
    value: float | None = None,
) -> float | None:
    """The decision threshold from in-distribution validation scores: `percentile` (default) or a
    `fixed` value. `best_f1` is chosen per OOD set later, from labels (None here)."""
    if method not in THRESHOLD_METHODS:
        raise ConfigValueError(
            f"ood.threshold.method must be one of {list(THRESHOLD_METHODS)}, got {method!r}"
        )
    if method == "percentile":
        return percentile_threshold(validation_scores, percentile)
    if method == "fixed":
        if value is None:
            raise ConfigValueError(
                "ood.threshold.method=fixed needs a value: set ood.threshold.value=<number>"
            )
        if not math.isfinite(value):
            raise ConfigValueError(f"ood.threshold.value must be a finite number, got {value}")
        return float(value)
    return None

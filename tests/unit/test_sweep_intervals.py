"""Intervals over seeds in sweep summaries: the t interval, and report 004's Table 2 over seeds."""

from __future__ import annotations

import math
import random

from src.analysis.sweep import summarise, table2
from src.evaluation.intervals import numeric_summary, t_interval


def test_t_interval_matches_the_textbook_value() -> None:
    # mean 2, s = 1, n = 3: 2 +- t(0.975, 2) / sqrt(3), t(0.975, 2) = 4.302653 (tables).
    low, high = t_interval([1.0, 2.0, 3.0])
    assert math.isclose(high - 2.0, 4.302653 / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(low + high, 4.0)
    assert t_interval([5.0]) == (5.0, 5.0)


def test_t_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    trials = 2000
    covered = 0
    for _ in range(trials):
        low, high = t_interval([rng.gauss(1.0, 2.0) for _ in range(10)])
        covered += low <= 1.0 <= high
    assert 0.935 <= covered / trials <= 0.965


def test_every_numeric_metric_of_a_summary_has_its_interval() -> None:
    jobs = [{"dir": str(i), "overrides": [f"seed={i}"], "metrics": {"val/loss": float(i)}} for i in range(4)]
    stats = summarise(jobs)["metrics"]["val/loss"]
    assert (
        stats["ci95"]
        == list(t_interval([0.0, 1.0, 2.0, 3.0]))
        == numeric_summary([0.0, 1.0, 2.0, 3.0])["ci95"]
    )


def test_table2_over_seeds_lists_each_class_and_set_with_intervals() -> None:
    metrics = [
        {
            f"ood/fashion/{name}": value + 0.01 * seed
            for name, value in {
                "precision_in": 0.9,
                "recall_in": 0.95,
                "f1_in": 0.92,
                "precision_ood": 0.8,
                "recall_ood": 0.7,
                "f1_ood": 0.75,
                "auroc": 0.97,
                "aupr": 0.96,
                "fpr95": 0.1,
            }.items()
        }
        for seed in range(3)
    ]
    jobs = [
        {"dir": str(i), "overrides": ["model=vae", f"seed={i}"], "metrics": m} for i, m in enumerate(metrics)
    ]
    summary = {"sweep": "s", "groups": {"model=vae": summarise(jobs)}}
    text = table2(summary)
    low, high = t_interval([0.7, 0.71, 0.72])
    assert "| fashion | OOD (fashion) | 0.810 [" in text
    assert f"0.710 [{low:.3f}, {high:.3f}]" in text  # recall_ood over the three seeds
    assert "| fashion | 0.980 [" in text  # AUROC mean
    assert (
        table2(
            {
                "sweep": "s",
                "groups": {
                    "g": summarise(jobs[:0] or [{"dir": "0", "overrides": [], "metrics": {"val/loss": 1.0}}])
                },
            }
        )
        is None
    )


def test_a_group_named_by_an_interpolating_override_is_drawn(tmp_path) -> None:  # noqa: ANN001
    from src.reporting.figures import sweep_summary

    jobs = [
        {"dir": str(i), "overrides": ["ood.background=runs/${data.name}_${seed}/last.ckpt", f"seed={i}"]}
        | {"metrics": {"test/loss": float(i)}}
        for i in range(3)
    ]
    groups = {"ood.background=runs/${data.name}_${seed}/last.ckpt": summarise(jobs)}
    assert sweep_summary(groups, tmp_path / "summary.png").stat().st_size > 1000
    # With a headline metric and the AUROC profile: an interval plot and the profile beside it.
    groups["other"] = {
        **summarise(jobs),
        "auroc_profile": {"thresholds": [0.0, 0.5, 1.0], "above": [1.0, 0.5, 0.0]},
    }
    assert sweep_summary(groups, tmp_path / "both.png", ["test/loss"]).stat().st_size > 1000

"""Comparisons of configurations (src/analysis/comparison.py) against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.analysis.comparison import (
    Configuration,
    compare,
    difference_of_means,
    difference_of_proportions,
    iqm,
    pairs,
    probability_of_improvement,
    stratified_iqm,
)
from src.errors import ConfigValueError


def test_newcombe_interval_matches_the_textbook_example() -> None:
    # Newcombe (1998), method 10, example (a): 56/70 against 48/80 gives 0.2 [0.0524, 0.3339].
    result = difference_of_proportions(48, 80, 56, 70)
    assert math.isclose(result["value"], 0.2)
    assert result["ci95"] == pytest.approx([0.0524, 0.3339], abs=5e-5)
    # Swapping A and B mirrors the interval.
    assert difference_of_proportions(56, 70, 48, 80)["ci95"] == pytest.approx([-0.3339, -0.0524], abs=5e-5)


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert iqm([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]) == 3.5  # mean of 2, 3, 4, 5: the 100 cut off
    assert iqm(np.arange(1.0, 9.0)) == 4.5


def test_stratified_iqm_interval_holds_the_iqm_of_identical_tasks() -> None:
    task = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    result = stratified_iqm([task, task])
    assert math.isclose(result["value"], 0.45)
    low, high = result["ci95"]
    assert low < 0.45 < high and high - low < 0.4


def test_a_configuration_against_itself_has_p_improvement_one_half() -> None:
    values = np.random.default_rng(1).normal(size=30)
    for higher in (True, False):
        result = probability_of_improvement(values, values, higher_is_better=higher)
        assert result["value"] == 0.5
        assert result["ci95"][0] < 0.5 < result["ci95"][1]
    # Every run of B above every run of A: 1 when higher is better, 0 when lower is.
    assert probability_of_improvement([1.0, 2.0], [3.0, 4.0], higher_is_better=True)["value"] == 1.0
    assert probability_of_improvement([1.0, 2.0], [3.0, 4.0], higher_is_better=False)["value"] == 0.0


def test_paired_interval_contains_zero_and_is_narrower_than_unpaired_on_correlated_runs() -> None:
    # Two identical configurations over the same 40 seeds: the seed moves both by the same large
    # amount, their own noise is small. Pairing by seed removes the seed's share of the spread.
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.0, 1.0, 40)
    a = seed_effect + rng.normal(0.0, 0.1, 40)
    b = seed_effect + rng.normal(0.0, 0.1, 40)
    seeds = list(range(40))
    paired = difference_of_means(a, b, seeds, seeds)
    unpaired = difference_of_means(a, b)
    assert paired["paired"] and not unpaired["paired"]
    assert paired["value"] == pytest.approx(unpaired["value"]) == pytest.approx(float(np.mean(b - a)))
    for result in (paired, unpaired):
        assert result["ci95"][0] < 0.0 < result["ci95"][1]
    width = paired["ci95"][1] - paired["ci95"][0]
    assert width < (unpaired["ci95"][1] - unpaired["ci95"][0]) / 5
    # Pairing follows the seeds, not the order the runs are listed in.
    shuffled = rng.permutation(40)
    again = difference_of_means(a[shuffled], b, [seeds[i] for i in shuffled], seeds)
    assert again["ci95"] == pytest.approx(paired["ci95"])
    # Different seeds: unpaired.
    assert not difference_of_means(a, b, seeds, [s + 100 for s in seeds])["paired"]


def _configuration(name: str, settings: dict[str, str], runs: int = 4) -> Configuration:
    return Configuration(
        name,
        settings,
        [
            {
                "seed": seed,
                "test/loss": 1.0 + seed + (0.5 if settings.get("width") == "4" else 0.0),
                "test/outcome": "optimal" if seed % 2 else "other",
                "ood/a/auroc": 0.6 + 0.01 * seed,
                "ood/b/auroc": 0.7 + 0.01 * seed,
                "ood/c/auroc": 0.8,
            }
            for seed in range(runs)
        ],
    )


def test_pairs_are_those_differing_in_one_setting_and_the_baseline_against_every_other() -> None:
    ca2, ca4 = (
        _configuration("ca 2", {"model": "ca", "width": "2"}),
        _configuration("ca 4", {"model": "ca", "width": "4"}),
    )
    vae2, vae4 = (
        _configuration("vae 2", {"model": "vae", "width": "2"}),
        _configuration("vae 4", {"model": "vae", "width": "4"}),
    )
    named = [(a.name, b.name) for a, b in pairs([ca2, ca4, vae2, vae4])]
    assert named == [("ca 2", "ca 4"), ("ca 2", "vae 2"), ("ca 4", "vae 4"), ("vae 2", "vae 4")]
    with_baseline = [(a.name, b.name) for a, b in pairs([ca2, ca4, vae2, vae4], "model=ca width=2")]
    assert with_baseline[:3] == [("ca 2", "ca 4"), ("ca 2", "vae 2"), ("ca 2", "vae 4")]
    assert len(with_baseline) == 5
    with pytest.raises(ConfigValueError, match="comparison.baseline='model=ca' matches 2"):
        pairs([ca2, ca4, vae2], "model=ca")


def test_compare_gives_each_headline_metric_its_statistics() -> None:
    a, b = _configuration("w2", {"width": "2"}), _configuration("w4", {"width": "4"})
    result = compare(
        a,
        b,
        ["test/*", "ood/*/auroc"],
        {"*loss*": "lower", "*auroc*": "higher"},
        {"test/outcome": ["optimal"]},
    )
    loss = result["metrics"]["test/loss"]
    assert loss["difference"]["value"] == pytest.approx(0.5) and loss["difference"]["paired"]
    assert loss["difference"]["ci95"] == pytest.approx([0.5, 0.5])  # the same shift in every seed
    assert loss["better"] == "lower"
    assert loss["probability_of_improvement"]["value"] == pytest.approx(
        6 / 16
    )  # B lower in 6 of the 16 pairs
    outcome = result["outcomes"]["test/outcome"]
    assert list(outcome) == ["optimal", "other"]
    assert outcome["optimal"]["value"] == 0.0 and outcome["optimal"]["a"] == 0.5
    auroc = result["iqm"]["ood/*/auroc"]
    assert auroc["tasks"] == 3 and auroc["difference"]["value"] == 0.0
    # The IQM of the 12 AUROCs (3 sets x 4 seeds): the middle 6 of them.
    values = sorted([0.6 + 0.01 * s for s in range(4)] + [0.7 + 0.01 * s for s in range(4)] + [0.8] * 4)
    assert auroc["a"]["value"] == pytest.approx(np.mean(values[3:9]))
    assert "seed" not in result["metrics"]

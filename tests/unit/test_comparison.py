"""Comparisons of configurations (src/analysis/comparison.py) against known answers."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.analysis.comparison import (
    Configuration,
    compare,
    difference_of_means,
    difference_of_proportions,
    iqm,
    pairs,
    performance_profile,
    probability_of_improvement,
    stratified_iqm,
)
from src.analysis.sweep import compare_sweeps, markdown, summarise_sweep
from src.errors import ConfigValueError
from src.reporting.wandb import comparison_rows


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


def test_performance_profile_is_the_fraction_above_each_threshold() -> None:
    assert performance_profile([0.5, 0.7, 0.9, 0.9], [0.0, 0.6, 0.8, 0.9, 1.0]) == [1.0, 0.75, 0.5, 0.0, 0.0]


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
    with pytest.raises(ConfigValueError, match="baseline 'model=ca' .* matches 2"):
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
    # The W&B summary run's table: one row per pair, result and statistic.
    rows = comparison_rows([result])
    assert rows[0][:4] == ["w2", "w4", "ood/a/auroc", "difference of means (paired)"]
    loss_rows = [row for row in rows if row[2] == "test/loss"]
    assert [row[3] for row in loss_rows] == ["difference of means (paired)", "probability of improvement"]
    assert loss_rows[0][4:] == pytest.approx([0.5, 0.5, 0.5])
    assert ["w2", "w4", "test/outcome = optimal", "difference of proportions"] in [row[:4] for row in rows]
    assert rows[-1][2:4] == ["ood/*/auroc", "difference of IQMs"]


def _sweep(folder: Path, data: str, losses: dict[str, list[float]], baseline: str | None = None) -> Path:
    """A sweep folder as a multirun leaves it: per job .hydra/overrides.yaml, config.yaml (its
    data and comparison.baseline) and metrics.json; `losses` maps an override to the test/loss of
    seeds 0, 1, ..."""
    job = 0
    for override, values in losses.items():
        for seed, loss in enumerate(values):
            (folder / str(job) / ".hydra").mkdir(parents=True)
            (folder / str(job) / ".hydra" / "overrides.yaml").write_text(
                yaml.safe_dump([override, f"seed={seed}"])
            )
            config = {"data": {"name": data}, "comparison": {"baseline": baseline}}
            (folder / str(job) / "config.yaml").write_text(yaml.safe_dump(config))
            metrics = {"seed": seed, "test/loss": loss, "test/outcome": "optimal" if loss < 1 else "other"}
            (folder / str(job) / "metrics.json").write_text(json.dumps(metrics))
            job += 1
    return folder


def test_sweeps_run_apart_are_compared_across_their_folders(tmp_path: Path) -> None:
    before = _sweep(tmp_path / "before", "lines2x2", {"model=ca": [1.0, 2.0, 3.0]})
    after = _sweep(
        tmp_path / "after", "lines2x2", {"model=ca": [0.5, 1.5, 2.5], "model=vae": [4.0, 5.0, 6.0]}
    )
    result = compare_sweeps([before, after], baseline="before: model=ca")
    named = [(c["a"], c["b"], c["differs_in"]) for c in result["comparisons"]]
    assert named == [
        ("before: model=ca", "after: model=ca", []),
        ("before: model=ca", "after: model=vae", ["model"]),
        ("after: model=ca", "after: model=vae", ["model"]),
    ]
    same = result["comparisons"][0]
    assert same["metrics"]["test/loss"]["difference"]["value"] == pytest.approx(-0.5)
    assert same["metrics"]["test/loss"]["difference"]["ci95"] == pytest.approx([-0.5, -0.5])  # paired
    assert same["metrics"]["test/loss"]["probability_of_improvement"]["value"] == pytest.approx(6 / 9)
    assert same["outcomes"]["test/outcome"]["optimal"]["value"] == pytest.approx(1 / 3)
    assert result["headline"][:2] == ["test/loss", "test/outcome"]


def test_sweeps_that_cannot_be_compared_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _sweep(tmp_path / "lines", "lines2x2", {"model=ca": [1.0, 2.0]})
    mnist = _sweep(tmp_path / "mnist", "mnist", {"model=ca": [1.0, 2.0]})
    with pytest.raises(ConfigValueError, match="ran on data \\['mnist'\\].*compare sweeps on the same data"):
        compare_sweeps([lines, mnist])
    single = _sweep(tmp_path / "single", "lines2x2", {"model=vae": [1.0]})
    with pytest.raises(
        ConfigValueError, match="'model=vae': 1 finished job\\(s\\); a comparison needs at least 2"
    ):
        compare_sweeps([lines, single])
    unmeasured = _sweep(tmp_path / "unmeasured", "lines2x2", {"model=vae": [1.0, 2.0]})
    for seed, metrics_file in enumerate(sorted(unmeasured.glob("*/metrics.json"))):
        metrics_file.write_text(json.dumps({"seed": seed, "train/time_s": 1.0}))
    with pytest.raises(ConfigValueError, match="share no headline result"):
        compare_sweeps([lines, unmeasured])
    # The entry point: the same refusal as one line on stderr, exit status 2.
    monkeypatch.setattr(sys, "argv", ["src.compare", str(lines), str(mnist)])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module("src.compare", run_name="__main__")
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("src.compare: ") and "same data" in error


def test_a_sweep_summary_compares_with_its_jobs_baseline_or_says_why_not(tmp_path: Path) -> None:
    losses = {"model=ca": [1.0, 2.0], "model=vae": [3.0, 4.0], "model=vaegan": [5.0, 6.0]}
    summary = summarise_sweep(_sweep(tmp_path / "s", "lines2x2", losses, baseline="model=vae"))
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [
        ("model=vae", "model=ca"),
        ("model=vae", "model=vaegan"),
        ("model=ca", "model=vaegan"),
    ]
    assert summary["comparisons"][0]["metrics"]["test/loss"]["difference"]["value"] == -2.0
    summary = summarise_sweep(_sweep(tmp_path / "t", "lines2x2", losses, baseline="model=gan"))
    assert summary["comparisons"] == [] and "baseline 'model=gan'" in summary["comparison_error"]
    assert "## Comparisons\n\nNone: the baseline 'model=gan'" in markdown(summary)

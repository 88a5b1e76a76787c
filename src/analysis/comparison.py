"""Comparisons of configurations over seeds: is B better than A, by how much, and how sure are we?

The statistics of the statistical-precipice practice (Agarwal et al., NeurIPS 2021), each with a
95% interval: the difference of means (a bootstrap, paired by seed where both configurations ran
the same seeds), the probability of improvement P(B better than A) (the Mann-Whitney U over all
pairs of runs, ties counted half, with a bootstrap interval), the interquartile mean (IQM) over
several tasks (the OOD sets) with a stratified bootstrap (each task's runs resampled apart), and
for outcome frequencies the difference of proportions with Newcombe's hybrid score interval.
The bootstraps are scipy.stats.bootstrap (percentile intervals, as rliable's, from a fixed seed).

Which pairs are compared: every two configurations whose settings (overrides) differ in at most
one key, and the `baseline` configuration against every other; which metrics: the keys that the
`headline` globs match; which way is better: the first glob of `better` that matches a key."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from src.errors import ConfigValueError
from src.evaluation.intervals import wilson_interval
from src.reporting.tables import markdown_table

# Bootstrap resamples of every interval here (and of the claims page's pooled ratios).
RESAMPLES = 2000
# The interquartile mean cuts this share of the values off each end.
IQM_CUT = 0.25


@dataclass
class Configuration:
    """One configuration of a sweep: its name, its settings (override key -> value) and the
    metrics of its finished jobs."""

    name: str
    settings: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)


def settings_of(overrides: Sequence[str]) -> dict[str, str]:
    """Overrides as key -> value (`model=ca` -> {"model": "ca"})."""
    return dict(override.split("=", 1) if "=" in override else (override, "") for override in overrides)


def _interval(samples: Sequence[np.ndarray], statistic: Callable) -> list[float] | None:
    """The 95% percentile bootstrap interval of `statistic` (vectorised over the last axis), each
    sample resampled apart; None when a sample has fewer than two values."""
    if min(len(sample) for sample in samples) < 2:
        return None
    result = stats.bootstrap(
        samples,
        statistic,
        vectorized=True,
        axis=-1,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def difference_of_means(
    a: Sequence[float],
    b: Sequence[float],
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
) -> dict[str, Any]:
    """mean(b) - mean(a) with its 95% bootstrap interval: of the per-seed differences when both ran
    the same seeds (`paired`), else of the two samples resampled apart."""
    paired = (
        seeds_a is not None
        and seeds_b is not None
        and None not in seeds_a
        and None not in seeds_b
        and len(set(seeds_a)) == len(seeds_a)
        and sorted(seeds_a) == sorted(seeds_b)
    )
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        order_a, order_b = np.argsort(seeds_a), np.argsort(seeds_b)
        differences = b[order_b] - a[order_a]
        interval = _interval((differences,), lambda d, axis: d.mean(axis))
    else:
        interval = _interval((a, b), lambda x, y, axis: y.mean(axis) - x.mean(axis))
    return {"value": float(b.mean() - a.mean()), "ci95": interval, "paired": paired}


def _improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(Y > X) over all pairs, ties counted half: the Mann-Whitney U over n_x n_y."""
    return stats.mannwhitneyu(y, x, axis=axis).statistic / (x.shape[axis] * y.shape[axis])


def probability_of_improvement(
    a: Sequence[float], b: Sequence[float], higher_is_better: bool
) -> dict[str, Any]:
    """P(a run of B is better than a run of A), ties counted half (0.5: no difference), with its
    95% bootstrap interval."""
    sign = 1.0 if higher_is_better else -1.0
    x, y = sign * np.asarray(a, dtype=float), sign * np.asarray(b, dtype=float)
    return {"value": float(_improvement(x, y)), "ci95": _interval((x, y), _improvement)}


def iqm(values: Sequence[float] | np.ndarray, axis: int | None = None) -> Any:
    """The interquartile mean: the mean of the middle half of the values."""
    return stats.trim_mean(values, IQM_CUT, axis=axis)


def stratified_iqm(tasks: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The IQM of all runs on all tasks (each task's values over runs) with a 95% stratified
    bootstrap interval: each task's runs resampled apart."""
    samples = [np.asarray(task, dtype=float) for task in tasks]
    interval = _interval(samples, lambda *s, axis: iqm(np.concatenate(s, axis=axis), axis=axis))
    return {"value": float(iqm(np.concatenate(samples))), "ci95": interval}


def difference_of_iqms(
    tasks_a: Sequence[Sequence[float]], tasks_b: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """IQM(B) - IQM(A) over the tasks with its 95% stratified bootstrap interval."""
    samples = [np.asarray(task, dtype=float) for task in [*tasks_a, *tasks_b]]
    split = len(tasks_a)

    def statistic(*s: np.ndarray, axis: int) -> np.ndarray:
        return iqm(np.concatenate(s[split:], axis=axis), axis=axis) - iqm(
            np.concatenate(s[:split], axis=axis), axis=axis
        )

    return {
        "value": float(iqm(np.concatenate(samples[split:])) - iqm(np.concatenate(samples[:split]))),
        "ci95": _interval(samples, statistic),
    }


def performance_profile(values: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """The fraction of `values` (every run's score on every task) above each threshold."""
    scores = np.asarray(values, dtype=float)
    return [float((scores > threshold).mean()) for threshold in thresholds]


def difference_of_proportions(hits_a: int, n_a: int, hits_b: int, n_b: int) -> dict[str, Any]:
    """p_b - p_a with Newcombe's hybrid score interval (Newcombe 1998, method 10: from the two
    95% Wilson intervals, no continuity correction)."""
    p_a, p_b = hits_a / n_a, hits_b / n_b
    low_a, high_a = wilson_interval(hits_a, n_a)
    low_b, high_b = wilson_interval(hits_b, n_b)
    difference = p_b - p_a
    low = difference - np.sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2)
    high = difference + np.sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2)
    return {"value": difference, "ci95": [float(low), float(high)], "a": p_a, "b": p_b, "n": [n_a, n_b]}


def direction(key: str, better: Mapping[str, str]) -> str | None:
    """Which way `key` is better ("higher" or "lower"): the first glob of `better` that matches it."""
    for pattern, way in better.items():
        if fnmatch.fnmatchcase(key, pattern):
            if way not in ("higher", "lower"):
                raise ConfigValueError(f"comparison.better[{pattern!r}] is {way!r}; use higher or lower")
            return way
    return None


def differing(a: Configuration, b: Configuration) -> list[str]:
    """The settings (override keys) whose values differ between two configurations, one holding a
    key the other lacks included."""
    return sorted(
        key for key in set(a.settings) | set(b.settings) if a.settings.get(key) != b.settings.get(key)
    )


def pairs(
    configurations: Sequence[Configuration], baseline: str | None = None
) -> list[tuple[Configuration, Configuration]]:
    """The pairs (A, B) to compare: the baseline (the configuration named `baseline`, or the one
    holding every override of it, e.g. "model=ca") against every other, then every two
    configurations whose settings differ in at most one key, each pair once, A listed first."""
    chosen: list[tuple[Configuration, Configuration]] = []
    if baseline:
        wanted = settings_of(baseline.split())
        matching = [
            c
            for c in configurations
            if c.name == baseline or all(c.settings.get(k) == v for k, v in wanted.items())
        ]
        if len(matching) != 1:
            names = [c.name for c in configurations]
            raise ConfigValueError(
                f"the baseline {baseline!r} (comparison.baseline, src.compare's --baseline) matches "
                f"{len(matching)} of the configurations {names}; name one, or overrides only it has"
            )
        chosen += [(matching[0], other) for other in configurations if other is not matching[0]]
    for i, a in enumerate(configurations):
        for b in configurations[i + 1 :]:
            if len(differing(a, b)) <= 1 and (a, b) not in chosen and (b, a) not in chosen:
                chosen.append((a, b))
    return chosen


def _values(runs: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], list[Any]]:
    """The values of `key` over the runs that have it, and those runs' seeds."""
    having = [run for run in runs if run.get(key) is not None]
    return [run[key] for run in having], [run.get("seed") for run in having]


def _numeric(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def compare(
    a: Configuration,
    b: Configuration,
    headline: Sequence[str],
    better: Mapping[str, str],
    categories: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """B against A on every key both report that a `headline` glob matches: numeric keys under
    "metrics" (the means, the difference of means, and P(improvement) where `better` declares the
    direction), categorical ones under "outcomes" (per category the difference of proportions),
    and under "iqm" every family of numeric keys over two or more tasks (`ood/<set>/<name>` ->
    `ood/*/<name>`): each IQM and their difference."""
    shared = {key for run in a.runs for key in run} & {key for run in b.runs for key in run}
    keys = sorted(key for key in shared if any(fnmatch.fnmatchcase(key, p) for p in headline))
    result: dict[str, Any] = {"a": a.name, "b": b.name, "metrics": {}, "outcomes": {}, "iqm": {}}
    families: dict[str, list[str]] = {}
    for key in keys:
        (values_a, seeds_a), (values_b, seeds_b) = _values(a.runs, key), _values(b.runs, key)
        if not values_a or not values_b:
            continue
        if _numeric(values_a) and _numeric(values_b):
            way = direction(key, better)
            entry = {
                "better": way,
                "n": [len(values_a), len(values_b)],
                "mean_a": float(np.mean(values_a)),
                "mean_b": float(np.mean(values_b)),
                "difference": difference_of_means(values_a, values_b, seeds_a, seeds_b),
            }
            if way is not None:
                entry["probability_of_improvement"] = probability_of_improvement(
                    values_a, values_b, way == "higher"
                )
            result["metrics"][key] = entry
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "ood":
                families.setdefault(f"ood/*/{parts[2]}", []).append(key)
        elif all(isinstance(v, str) for v in [*values_a, *values_b]):
            known = list((categories or {}).get(key, ()))
            seen = sorted((set(values_a) | set(values_b)) - set(known))
            result["outcomes"][key] = {
                category: difference_of_proportions(
                    values_a.count(category), len(values_a), values_b.count(category), len(values_b)
                )
                for category in known + seen
            }
    for family, members in families.items():
        if len(members) < 2:
            continue
        tasks_a = [_values(a.runs, key)[0] for key in members]
        tasks_b = [_values(b.runs, key)[0] for key in members]
        result["iqm"][family] = {
            "tasks": len(members),
            "better": direction(members[0], better),
            "a": stratified_iqm(tasks_a),
            "b": stratified_iqm(tasks_b),
            "difference": difference_of_iqms(tasks_a, tasks_b),
        }
    return result


def comparisons(
    configurations: Sequence[Configuration],
    headline: Sequence[str],
    better: Mapping[str, str],
    baseline: str | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """`compare` for every pair `pairs` chooses; each names the settings the two differ in."""
    return [
        {**compare(a, b, headline, better, categories), "differs_in": differing(a, b)}
        for a, b in pairs(configurations, baseline)
    ]


def _interval_text(entry: Mapping[str, Any], digits: str) -> str:
    value = format(entry["value"], digits)
    if entry.get("ci95") is None:
        return f"{value} (no interval: under 2 runs)"
    return f"{value} [{format(entry['ci95'][0], digits)}, {format(entry['ci95'][1], digits)}]"


def markdown(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparisons as markdown lines: per pair, a table of the metrics (difference of means,
    paired or not, and P(B better than A)), one of the outcome frequencies (difference of
    proportions) and one of the IQMs over tasks."""
    lines: list[str] = []
    for result in results:
        lines += [f"### B = `{result['b']}` vs A = `{result['a']}`", ""]
        differing = ", ".join(result["differs_in"]) or "nothing: the same settings, another sweep"
        lines += [f"differs in: {differing}", ""]
        if result["metrics"]:
            rows = [
                [
                    key,
                    f"{entry['mean_a']:.4g}",
                    f"{entry['mean_b']:.4g}",
                    _interval_text(entry["difference"], ".4g"),
                    "by seed" if entry["difference"]["paired"] else "unpaired",
                    "–" if entry["better"] is None else entry["better"],
                    _interval_text(entry["probability_of_improvement"], ".3f")
                    if "probability_of_improvement" in entry
                    else "–",
                    "{} / {}".format(*entry["n"]),
                ]
                for key, entry in result["metrics"].items()
            ]
            header = [
                "metric",
                "mean A",
                "mean B",
                "B − A [95% bootstrap]",
                "pairing",
                "better",
                "P(B better) [95%]",
                "n A / B",
            ]
            lines += markdown_table(header, rows, "lrrrllrr") + [""]
        if result["outcomes"]:
            rows = [
                [key, category, f"{entry['a']:.3f}", f"{entry['b']:.3f}", _interval_text(entry, ".3f")]
                for key, categories in result["outcomes"].items()
                for category, entry in categories.items()
            ]
            header = ["outcome", "value", "frequency A", "frequency B", "B − A [95% Newcombe]"]
            lines += markdown_table(header, rows, "llrrr") + [""]
        if result["iqm"]:
            rows = [
                [
                    family,
                    entry["tasks"],
                    _interval_text(entry["a"], ".4g"),
                    _interval_text(entry["b"], ".4g"),
                    _interval_text(entry["difference"], ".4g"),
                ]
                for family, entry in result["iqm"].items()
            ]
            header = ["metric over tasks", "tasks", "IQM A [95%]", "IQM B [95%]", "B − A [95% stratified]"]
            lines += markdown_table(header, rows, "lrrrr") + [""]
    return lines

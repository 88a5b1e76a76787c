"""Summaries of sweeps: after any multirun, `SweepSummary` (a Hydra callback, conf/hydra/default.yaml)
reads every job folder of the sweep and writes summary.json, summary.md and summary.png beside
them. Jobs are grouped by their overrides other than `seed`, so `model=ca,vae seed='range(0,100)'`
gives one group per model."""

from __future__ import annotations

import atexit
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import MissingFileError
from src.evaluation.census import OUTCOMES
from src.evaluation.intervals import numeric_summary, wilson_interval
from src.evaluation.line_outcomes import LINE_OUTCOMES
from src.pipeline.config import configuration_key
from src.pipeline.run import read_run
from src.reporting import wandb as wandb_reporting
from src.reporting.figures import sweep_summary
from src.reporting.tables import markdown_table

log = logging.getLogger(__name__)
# Categories every summary lists, even when no job fell into them.
KNOWN_CATEGORIES = {"test/outcome": OUTCOMES, "test/lines/outcome": LINE_OUTCOMES}
# The prefix of results that describe a run's state at initialisation (cross-tabulated with outcomes).
INITIAL_STATE = "init/"


def load_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job folder (one holding .hydra/) with its overrides, metrics (None if the job failed)
    and the last line of its error, if any; and every job submitted to a cluster (jobs.json) that
    left no folder, as failed."""
    from src.pipeline.cluster import submitted

    jobs = [
        {
            "dir": folder,
            "overrides": entry["overrides"],
            "metrics": None,
            "error": f"no job folder: cluster job {entry['job_id']} ended without writing it",
        }
        for folder, entry in submitted(sweep_dir).items()
        if not (sweep_dir / folder / ".hydra").is_dir()
    ]
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra"), key=lambda p: (len(p.parent.name), p.parent.name)):
        record = read_run(hydra_dir.parent)
        metrics = record.metrics if record.finished else None
        jobs.append(
            {
                "dir": record.dir.name,
                "overrides": record.overrides,
                "metrics": metrics,
                "error": record.error,
            }
        )
    return jobs


def summarise(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, frequencies and 95% Wilson intervals of every categorical (string) result, and mean,
    std, min and max of every numeric one, over the jobs that finished."""
    finished = [job["metrics"] for job in jobs if job["metrics"] is not None]
    summary: dict[str, Any] = {
        "n_jobs": len(jobs),
        "n_failed": len(jobs) - len(finished),
        "failed": {job["dir"]: job["error"] for job in jobs if job["metrics"] is None},
        "counts": {},
        "frequencies": {},
        "ci95": {},
        "metrics": {},
    }
    # Not results: the seed, and the checkpoint file the metrics were measured on.
    keys = sorted({key for metrics in finished for key in metrics if key not in ("seed", "checkpoint")})
    for key in keys:
        values = [metrics[key] for metrics in finished if key in metrics and metrics[key] is not None]
        if all(isinstance(value, str) for value in values):
            counts = Counter(values)
            categories = list(KNOWN_CATEGORIES.get(key, ())) + sorted(
                set(counts) - set(KNOWN_CATEGORIES.get(key, ()))
            )
            summary["counts"][key] = {category: counts[category] for category in categories}
            summary["frequencies"][key] = {c: counts[c] / len(values) for c in categories}
            summary["ci95"][key] = {c: list(wilson_interval(counts[c], len(values))) for c in categories}
        elif all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
            summary["metrics"][key] = numeric_summary(values)
    summary["crosstabs"] = crosstabs(finished, summary["counts"])
    return summary


def crosstabs(finished: list[dict[str, Any]], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Each categorical state at initialisation (`init/*`) against each outcome the sweep counted
    (`KNOWN_CATEGORIES`): under "<init key> x <outcome key>", the count of every outcome per state."""
    tables = {}
    for state in (key for key in counts if key.startswith(INITIAL_STATE)):
        for outcome in (key for key in KNOWN_CATEGORIES if key in counts):
            table = {value: dict.fromkeys(counts[outcome], 0) for value in counts[state]}
            for metrics in finished:
                if state in metrics and outcome in metrics:
                    table[metrics[state]][metrics[outcome]] += 1
            tables[f"{state} x {outcome}"] = table
    return tables


def summarise_sweep(sweep_dir: Path) -> dict[str, Any]:
    """The summary of all jobs, and under "groups" one per setting (`configuration_key`: the
    overrides apart from the seed and paths.*)."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise MissingFileError(
            f"{sweep_dir} holds no job folders (<job>/.hydra/): give a sweep folder, "
            "e.g. outputs/multiruns/<date>_<time>_<id>."
        )
    summary = {"sweep": str(sweep_dir), **summarise(jobs), "groups": {}}
    by_group: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_group.setdefault(configuration_key(job["overrides"]), []).append(job)
    summary["groups"] = {name: summarise(group_jobs) for name, group_jobs in by_group.items()}
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: per group, the failed jobs, each categorical result's counts, frequencies and
    95% Wilson intervals, and the numeric results' mean with its 95% t interval, std, min and max."""
    lines = [f"# Sweep summary: {summary['sweep']}", ""]
    for name, group in summary["groups"].items():
        lines += [f"## {name}", "", f"jobs: {group['n_jobs']}, failed: {group['n_failed']}", ""]
        for job_dir, error in group["failed"].items():
            lines.append(f"- failed job `{job_dir}`: {error}")
        for key, counts in group["counts"].items():
            rows = [
                [
                    category,
                    count,
                    f"{group['frequencies'][key][category]:.3f}",
                    "[{:.3f}, {:.3f}]".format(*group["ci95"][key][category]),
                ]
                for category, count in counts.items()
            ]
            lines += ["", f"### {key}", ""]
            lines += markdown_table(["value", "count", "frequency", "95% Wilson interval"], rows, "lrrl")
        if group["metrics"]:
            rows = [
                [
                    key,
                    f"{s['mean']:.6g}",
                    "[{:.6g}, {:.6g}]".format(*s["ci95"]),
                    f"{s['std']:.3g}",
                    f"{s['min']:.6g}",
                    f"{s['max']:.6g}",
                    s["n"],
                ]
                for key, s in group["metrics"].items()
            ]
            lines += ["", "### metrics", ""]
            header = ["metric", "mean", "95% t interval", "std", "min", "max", "n"]
            lines += markdown_table(header, rows, "lrlrrrr")
        for name_of_table, table in group.get("crosstabs", {}).items():
            outcomes = list(next(iter(table.values()), {}))
            rows = []
            for state, row in table.items():
                total = sum(row.values())
                rows.append(
                    [state, total]
                    + [f"{count} ({count / total:.2f})" if total else "0" for count in row.values()]
                )
            lines += ["", f"### {name_of_table} (count, frequency within the row)", ""]
            lines += markdown_table(["state", "runs", *outcomes], rows, "lr" + "r" * len(outcomes))
        lines.append("")
    return "\n".join(lines)


def _mean_and_interval(stats: dict[str, Any] | None) -> str:
    return "–" if stats is None else "{:.3f} [{:.3f}, {:.3f}]".format(stats["mean"], *stats["ci95"])


def table2(summary: dict[str, Any]) -> str | None:
    """table2.md: report 004's Table 2 over seeds, per group and OOD set: precision, recall and F1
    of each class (in-distribution, OOD) at the validation threshold, then AUROC, AUPR and the FPR
    at 95% TPR, each as the mean over seeds with its 95% t interval. None without OOD results."""
    lines = [f"# Table 2 over seeds: {summary['sweep']}", ""]
    found = False
    for name, group in summary["groups"].items():
        metrics = group["metrics"]
        sets = sorted(
            {key.split("/")[1] for key in metrics if key.startswith("ood/") and key.endswith("/f1_in")}
        )
        if not sets:
            continue
        found = True
        n = max(metrics[f"ood/{ood_set}/f1_in"]["n"] for ood_set in sets)
        lines += [f"## {name}", "", f"seeds: {n}; mean [95% t interval] over seeds", ""]
        rows = []
        for ood_set in sets:
            for label, suffix in (("in-distribution", "in"), (f"OOD ({ood_set})", "ood")):
                rows.append(
                    [ood_set, label]
                    + [
                        _mean_and_interval(metrics.get(f"ood/{ood_set}/{m}_{suffix}"))
                        for m in ("precision", "recall", "f1")
                    ]
                )
        lines += markdown_table(["OOD set", "class", "precision", "recall", "F1"], rows, "llrrr")
        rows = [
            [ood_set]
            + [_mean_and_interval(metrics.get(f"ood/{ood_set}/{m}")) for m in ("auroc", "aupr", "fpr95")]
            for ood_set in sets
        ]
        lines += ["", *markdown_table(["OOD set", "AUROC", "AUPR", "FPR at 95% TPR"], rows, "lrrr"), ""]
    return "\n".join(lines) if found else None


def write_summary(sweep_dir: Path) -> dict[str, Any]:
    """Write summary.json, summary.md and summary.png (and table2.md for OOD results) into the
    sweep folder; return the summary."""
    summary = summarise_sweep(sweep_dir)
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (sweep_dir / "summary.md").write_text(markdown(summary))
    if (table := table2(summary)) is not None:
        (sweep_dir / "table2.md").write_text(table)
    sweep_summary(summary["groups"], sweep_dir / "summary.png")
    return summary


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep when a multirun ends; exit non-zero if a job failed
    (after the summary is written, so the other jobs' results are kept and counted). A sweep that
    is stopped before its end (a job interrupted by SIGTERM or SIGINT) is summarised as the process
    exits: the jobs that ended, and the interrupted one as failed."""

    def __init__(self) -> None:
        self._ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.register(self._summarise_if_stopped, Path(str(config.hydra.sweep.dir)))

    def _summarise_if_stopped(self, sweep_dir: Path) -> None:
        if self._ended or not sweep_dir.is_dir() or not any(sweep_dir.glob("*/.hydra")):
            return  # nothing to summarise: it stopped before any job started (e.g. a bad config value)
        summary = write_summary(sweep_dir)
        log.error(
            "Sweep stopped before its end: %s summarises the %d job(s) started (%d failed or interrupted)",
            sweep_dir / "summary.md",
            summary["n_jobs"],
            summary["n_failed"],
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._ended = True
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if OmegaConf.select(config, "hydra.launcher.detach", default=False):
            return  # its jobs run on: the summary job writes the summary when they have ended
        if not any(sweep_dir.glob("*/.hydra")):  # e.g. a resumed Optuna study with nothing left to run
            log.info("Sweep ran no jobs: no summary")
            return
        summary = write_summary(sweep_dir)
        log.info(
            "Sweep summary: %s (%d jobs, %d failed)",
            sweep_dir / "summary.md",
            summary["n_jobs"],
            summary["n_failed"],
        )
        if "wandb" in config.get("logger", {}):
            try:
                wandb_reporting.log_summary(config, sweep_dir, summary)
            except Exception as error:  # noqa: BLE001 - Hydra would only warn, and the sweep exit 0
                log.error("The sweep's W&B summary run failed (%s: %s)", type(error).__name__, error)
                sys.exit(1)
        if summary["n_failed"]:
            log.error("%d of %d jobs failed: %s", summary["n_failed"], summary["n_jobs"], summary["failed"])
            sys.exit(1)

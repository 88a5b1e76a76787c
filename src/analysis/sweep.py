"""Summaries of sweeps: after any multirun, `SweepSummary` (a Hydra callback, conf/hydra/default.yaml)
reads every job folder of the sweep and writes summary.json, summary.md and summary.png beside
them. Jobs are grouped by their overrides other than `seed`, so `model=ca,vae seed='range(0,100)'`
gives one group per model; a sweep of several groups compares them (src/analysis/comparison.py)."""

from __future__ import annotations

import atexit
import fnmatch
import json
import logging
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.analysis import comparison
from src.errors import ConfigValueError, MissingFileError
from src.evaluation.census import OUTCOMES
from src.evaluation.intervals import numeric_summary, wilson_interval
from src.evaluation.line_outcomes import LINE_OUTCOMES
from src.files import write_text_atomic
from src.pipeline.config import CONFIG_DIR, NOT_SETTINGS, configuration_key, load_run_config
from src.pipeline.process import Interrupted, interruption
from src.pipeline.run import INTERRUPTED_BY, read_run, sweep_command
from src.reporting import wandb as wandb_reporting
from src.reporting.figures import sweep_summary
from src.reporting.tables import markdown_table

log = logging.getLogger(__name__)
# Categories every summary lists, even when no job fell into them.
KNOWN_CATEGORIES = {"test/outcome": OUTCOMES, "test/lines/outcome": LINE_OUTCOMES}
# The prefix of results that describe a run's state at initialisation (cross-tabulated with outcomes).
INITIAL_STATE = "init/"
# The config keys a summary reads from its jobs' config.yaml (conf/config.yaml documents them).
SUMMARY_SETTINGS = ("headline", "comparison")
# Not results: the seed, the checkpoint file the metrics were measured on, the precision that ran.
NOT_RESULTS = ("seed", "checkpoint", "precision")
# The performance profile of a group: the fraction of its runs' AUROCs, over every OOD set
# (ood/<set>/auroc, the decision score's), above each of these thresholds.
PROFILE_METRIC = re.compile(r"ood/[^/]+/auroc")
PROFILE_THRESHOLDS = [step / 100 for step in range(101)]


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
    keys = sorted({key for metrics in finished for key in metrics if key not in NOT_RESULTS})
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


def summary_settings(sweep_dir: Path, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The `headline` globs and the `comparison` settings the sweep's jobs ran with (the first job's
    config.yaml), conf/config.yaml's where the job's config lacks them."""
    settings = OmegaConf.masked_copy(OmegaConf.load(CONFIG_DIR / "config.yaml"), list(SUMMARY_SETTINGS))
    for job in jobs:
        if (path := sweep_dir / job["dir"] / "config.yaml").is_file():
            config = load_run_config(path, sections=(), builds=False)
            ran = OmegaConf.masked_copy(config, [key for key in SUMMARY_SETTINGS if key in config])
            settings = OmegaConf.merge(settings, ran)
            break
    return OmegaConf.to_container(settings, resolve=True)


def group_jobs(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The jobs by setting (`configuration_key`: the overrides apart from the seed and paths.*)."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_group.setdefault(configuration_key(job["overrides"]), []).append(job)
    return by_group


def configurations(by_group: dict[str, list[dict[str, Any]]]) -> list[comparison.Configuration]:
    """Each group as a configuration to compare: its name, settings and finished jobs' metrics."""
    return [
        comparison.Configuration(
            name,
            comparison.settings_of([o for o in group[0]["overrides"] if not o.startswith(NOT_SETTINGS)]),
            [job["metrics"] for job in group if job["metrics"] is not None],
        )
        for name, group in by_group.items()
    ]


def headline_keys(groups: dict[str, dict[str, Any]], patterns: list[str]) -> list[str]:
    """The results of any group that a `headline` glob matches, in the globs' order."""
    present = list(dict.fromkeys(key for g in groups.values() for key in [*g["metrics"], *g["counts"]]))
    return list(dict.fromkeys(k for p in patterns for k in present if fnmatch.fnmatchcase(k, p)))


def jobs_named(sweep_dir: Path) -> int | None:
    """How many jobs the sweep's multirun.yaml names: its sweep overrides expanded as Hydra's basic
    sweeper expands them. None without a readable multirun.yaml, or for a sweeper that searches
    (Optuna's trials are not named up front)."""
    try:
        hydra = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        if not str(hydra.sweeper.get("_target_")).endswith(("GroupedSweeper", "BasicSweeper")):
            return None
        params = [f"{key}={value}" for key, value in (hydra.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *hydra.overrides.task])
        batches = BasicSweeper.split_arguments(overrides, None)
    except (OSError, yaml.YAMLError, OmegaConfBaseException, HydraException):
        return None
    return sum(len(batch) for batch in batches)


def _sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """`load_jobs`, refusing a folder without any."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise MissingFileError(
            f"{sweep_dir} holds no job folders (<job>/.hydra/): give a sweep folder, "
            "e.g. outputs/multiruns/<date>_<time>_<id>."
        )
    return jobs


def summarise_sweep(sweep_dir: Path, interrupt: Interrupted | None = None) -> dict[str, Any]:
    """The summary of all jobs, under "groups" one per setting (`group_jobs`; with OOD results,
    each with its `auroc_profile`), the `headline` results, and with two or more groups their
    `comparisons` (src/analysis/comparison.py; a baseline that names no single group leaves them
    empty, its problem under `comparison_error`). For a sweep stopped by `interrupt`, under
    "interrupted": the signal, the jobs it stopped, how many it kept from starting, and the
    command that resumes the sweep."""
    jobs = _sweep_jobs(sweep_dir)
    summary = {"sweep": str(sweep_dir), **summarise(jobs), "groups": {}}
    named = jobs_named(sweep_dir)
    if named is not None and named > len(jobs):
        summary["n_named"] = named  # more than the folders found: stopped early, or jobs sharing one
    if interrupt is not None:
        summary["interrupted"] = {
            "by": interrupt.signal,
            "status": interrupt.status,
            "jobs": [job["dir"] for job in jobs if str(job["error"]).startswith(INTERRUPTED_BY)],
            "not_started": max((named or 0) - len(jobs), 0),
            "resume": sweep_command(sweep_dir),
        }
    by_group = group_jobs(jobs)
    summary["groups"] = {name: summarise(group_jobs) for name, group_jobs in by_group.items()}
    for name, group in by_group.items():
        aurocs = [
            value
            for job in group
            for key, value in (job["metrics"] or {}).items()
            if PROFILE_METRIC.fullmatch(key) and isinstance(value, int | float)
        ]
        if aurocs:
            profile = comparison.performance_profile(aurocs, PROFILE_THRESHOLDS)
            summary["groups"][name]["auroc_profile"] = {"thresholds": PROFILE_THRESHOLDS, "above": profile}
    settings = summary_settings(sweep_dir, jobs)
    summary["headline"] = headline_keys(summary["groups"], settings["headline"])
    summary["comparisons"] = []
    if len(by_group) > 1:
        try:
            summary["comparisons"] = comparison.comparisons(
                configurations(by_group),
                settings["headline"],
                settings["comparison"]["better"],
                settings["comparison"]["baseline"],
                KNOWN_CATEGORIES,
            )
        except ConfigValueError as problem:
            summary["comparison_error"] = str(problem)
    return summary


def _data_name(sweep_dir: Path, group: list[dict[str, Any]]) -> str:
    """The `data.name` a group of jobs trained on (its first job's config.yaml)."""
    path = sweep_dir / group[0]["dir"] / "config.yaml"
    config = load_run_config(path, sections=(), builds=False) if path.is_file() else OmegaConf.create()
    return str(OmegaConf.select(config, "data.name", default="(unknown)"))


def compare_sweeps(sweep_dirs: list[Path], baseline: str | None = None) -> dict[str, Any]:
    """The comparison of the configurations of several sweep folders (`python -m src.compare`),
    named `<folder name>: <group>`: their summaries under "groups", the `headline` results and the
    `comparisons`, with the headline globs and `better` of the first sweep's jobs. Refuses (one
    line) sweeps on other data, a configuration with under two finished seeds, and sweeps that
    share no headline result."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    settings: dict[str, Any] = {}
    data: set[str] = set()
    shared: set[str] | None = None
    for sweep_dir in sweep_dirs:
        jobs = _sweep_jobs(sweep_dir)
        settings = settings or summary_settings(sweep_dir, jobs)
        groups = group_jobs(jobs)
        ran_on = {_data_name(sweep_dir, group) for group in groups.values()}
        data = data or ran_on
        if ran_on != data:
            raise ConfigValueError(
                f"{sweep_dir} ran on data {sorted(ran_on)}, {sweep_dirs[0]} on {sorted(data)}: "
                "compare sweeps on the same data"
            )
        for name, group in groups.items():
            finished = sum(job["metrics"] is not None for job in group)
            if finished < 2:
                raise ConfigValueError(
                    f"{sweep_dir}, configuration {name!r}: {finished} finished job(s); a comparison "
                    "needs at least 2 seeds per configuration (run more seeds)"
                )
            by_group[f"{sweep_dir.name}: {name}"] = group
        measured = {key for job in jobs for key in job["metrics"] or {}}
        keys = {key for key in measured if any(fnmatch.fnmatchcase(key, p) for p in settings["headline"])}
        shared = keys if shared is None else shared & keys
    if not shared:
        raise ConfigValueError(
            f"the sweeps {[str(d) for d in sweep_dirs]} share no headline result (the `headline` globs "
            f"{settings['headline']}): compare sweeps that measured the same metrics"
        )
    result: dict[str, Any] = {"sweeps": [str(d) for d in sweep_dirs]}
    result["groups"] = {name: summarise(group) for name, group in by_group.items()}
    result["headline"] = headline_keys(result["groups"], settings["headline"])
    result["comparisons"] = comparison.comparisons(
        configurations(by_group),
        settings["headline"],
        settings["comparison"]["better"],
        baseline,
        KNOWN_CATEGORIES,
    )
    return result


def headline_table(summary: dict[str, Any]) -> list[str]:
    """One row per headline result (per category of an outcome), one column per group: the mean
    with its 95% t interval, or the frequency with its 95% Wilson interval."""
    groups = summary["groups"]
    rows = [["runs (failed)", *(f"{g['n_jobs']} ({g['n_failed']})" for g in groups.values())]]
    for key in summary["headline"]:
        categories = dict.fromkeys(c for g in groups.values() for c in g["counts"].get(key, {}))
        for category in categories:
            cells = [
                "{:.3f} [{:.3f}, {:.3f}]".format(g["frequencies"][key][category], *g["ci95"][key][category])
                if category in g["counts"].get(key, {})
                else "–"
                for g in groups.values()
            ]
            rows.append([f"{key} = {category}", *cells])
        if not categories:
            rows.append([key, *(_mean_and_interval(g["metrics"].get(key), ".4g") for g in groups.values())])
    header = ["result", *(f"`{name}`" for name in groups)]
    return markdown_table(header, rows, "l" + "r" * len(groups))


def leading_sections(summary: dict[str, Any]) -> list[str]:
    """The sections a summary (or a comparison of sweeps) opens with: the headline table, then the
    comparisons of its groups."""
    lines = ["## Headline", "", "mean [95% t interval] or frequency [95% Wilson interval] over seeds", ""]
    lines += [*headline_table(summary), ""]
    if summary.get("comparison_error"):
        lines += ["## Comparisons", "", f"None: {summary['comparison_error']}", ""]
    elif summary["comparisons"]:
        lines += ["## Comparisons", "", *comparison.markdown(summary["comparisons"])]
    return lines


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: first the headline table (`headline_table`) and the comparisons of the groups;
    then per group, the failed jobs, each categorical result's counts, frequencies and 95% Wilson
    intervals, and the numeric results' mean with its 95% t interval, std, min and max."""
    lines = [f"# Sweep summary: {summary['sweep']}", ""]
    if interrupted := summary.get("interrupted"):
        stopped = ", ".join(f"`{job}`" for job in interrupted["jobs"]) or "none"
        lines += [
            f"**Interrupted by {interrupted['by']}** (exit status {interrupted['status']}): jobs stopped "
            f"unfinished: {stopped} (each one's error.txt says where); jobs not started: "
            f"{interrupted['not_started']}. Resume with the same command, into this folder: "
            f"`{interrupted['resume']}`",
            "",
        ]
    elif "n_named" in summary:
        lines += [
            f"**multirun.yaml names {summary['n_named']} jobs, but only {summary['n_jobs']} job folders "
            "were found**: the sweep stopped early, or its jobs shared folders (hydra.sweep.subdir).",
            "",
        ]
    lines += leading_sections(summary)
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


def _mean_and_interval(stats: dict[str, Any] | None, digits: str = ".3f") -> str:
    if stats is None:
        return "–"
    return "{} [{}, {}]".format(*(format(value, digits) for value in (stats["mean"], *stats["ci95"])))


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


def write_summary(sweep_dir: Path, interrupt: Interrupted | None = None) -> dict[str, Any]:
    """Write summary.json, summary.md and summary.png (and table2.md for OOD results) into the
    sweep folder, saying so if `interrupt` stopped the sweep; return the summary."""
    summary = summarise_sweep(sweep_dir, interrupt)
    write_text_atomic(sweep_dir / "summary.json", json.dumps(summary, indent=2))
    write_text_atomic(sweep_dir / "summary.md", markdown(summary))
    if (table := table2(summary)) is not None:
        write_text_atomic(sweep_dir / "table2.md", table)
    sweep_summary(summary["groups"], sweep_dir / "summary.png", summary["headline"])
    return summary


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's modification time and size (None where it does not exist): whether it was written since."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep when a multirun ends; exit non-zero if a job failed
    (after the summary is written, so the other jobs' results are kept and counted). A sweep that
    is stopped before its summary is written (by a failure, or by SIGTERM or SIGINT: during a job,
    between two, or while it summarises) is summarised as the process exits: the jobs that ended,
    the others as failed; after a signal, the summary says so (the jobs it stopped have said so in
    their error.txt)."""

    def __init__(self) -> None:
        self._ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        atexit.register(self._summarise_if_stopped, sweep_dir, _stamp(sweep_dir / "multirun.yaml"))

    def _summarise_if_stopped(self, sweep_dir: Path, earlier: tuple[int, int] | None) -> None:
        if self._ended or _stamp(sweep_dir / "multirun.yaml") in (None, earlier):
            # Nothing to summarise: the sweeper refused the sweep before it began (a bad value, another
            # sweep's folder), so this sweep's multirun.yaml was never written.
            return
        if not any(sweep_dir.glob("*/.hydra")):
            return  # it stopped before any job started
        interrupt = interruption()
        summary = write_summary(sweep_dir, interrupt)
        if interrupt is None:
            log.error(
                "Sweep stopped before its end: %s summarises the %d job(s) started (%d failed)",
                sweep_dir / "summary.md",
                summary["n_jobs"],
                summary["n_failed"],
            )
            return
        interrupted = summary["interrupted"]
        log.error(
            "Sweep %s %s: %d of %d job(s) finished, %d stopped unfinished, %d not started (summary: %s); "
            "resume with the same command: %s",
            sweep_dir,
            interrupt,
            summary["n_jobs"] - summary["n_failed"],
            summary["n_jobs"] + interrupted["not_started"],
            len(interrupted["jobs"]),
            interrupted["not_started"],
            sweep_dir / "summary.md",
            interrupted["resume"],
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if OmegaConf.select(config, "hydra.launcher.detach", default=False):
            self._ended = True
            return  # its jobs run on: the summary job writes the summary when they have ended
        if not any(sweep_dir.glob("*/.hydra")):  # e.g. a resumed Optuna study with nothing left to run
            self._ended = True
            log.info("Sweep ran no jobs: no summary")
            return
        summary = write_summary(sweep_dir)
        self._ended = True  # a signal before this line: the summary is written again as the process exits
        log.info(
            "Sweep summary: %s (%d jobs, %d failed)",
            sweep_dir / "summary.md",
            summary["n_jobs"],
            summary["n_failed"],
        )
        if "comparison_error" in summary:
            log.error("The summary compares no configurations: %s", summary["comparison_error"])
        if "wandb" in config.get("logger", {}):
            try:
                wandb_reporting.log_summary(config, sweep_dir, summary)
            except Exception as error:  # noqa: BLE001 - Hydra would only warn, and the sweep exit 0
                log.error("The sweep's W&B summary run failed (%s: %s)", type(error).__name__, error)
                sys.exit(1)
        if summary["n_failed"]:
            log.error("%d of %d jobs failed: %s", summary["n_failed"], summary["n_jobs"], summary["failed"])
            sys.exit(1)

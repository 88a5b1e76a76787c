"""Weights & Biases: the logger of a job's run (its mode, its summary, media, scores and
checkpoints), the sweep's summary run, and finishing whatever run a failed job left open. `wandb`
itself is imported only where a run is logged."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from src.reporting.figures import roc
from src.reporting.run_config import logged_config
from src.reporting.tables import read_scores_csv

log = logging.getLogger(__name__)

# The in-distribution set every OOD set is scored against (scores.csv's `set` column).
IN_DISTRIBUTION_SET = "test"


def wandb_mode() -> str | None:
    """The mode for wandb.init. None lets wandb decide: WANDB_MODE when set, otherwise online. With
    no credentials for the configured server (WANDB_BASE_URL, `wandb login --host`), `offline`, so
    that a run without an account is still written, to be synced later."""
    if os.environ.get("WANDB_MODE"):
        return None
    return None if _has_credentials() else "offline"


def _has_credentials() -> bool:
    """Whether wandb finds credentials for its configured server (its own lookup: the environment,
    .netrc for that host, its settings)."""
    import wandb
    from wandb.sdk.lib.wbauth import authenticate
    from wandb.sdk.lib.wbauth.host_url import HostUrl

    settings = wandb.setup().settings
    host = HostUrl(settings.base_url, app_url=settings.app_url)
    return authenticate._use_system_auth(host=host, source="aevae", update_session=False) is not None


def finish_open_run(exit_code: int) -> None:
    """Finish the W&B run a job left open (it failed or was stopped), with its exit code, so that
    the next job of the sweep starts a run of its own."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    try:
        wandb.run.finish(exit_code=exit_code)
    except Exception as error:  # noqa: BLE001 - the job's own error is the one to report
        log.error("Could not finish the W&B run (%s: %s)", type(error).__name__, error)


class WandbRunLogger(WandbLogger):
    """Lightning's WandbLogger for one job: `val/loss` summarised by its minimum; at the end of the
    run (`finish`) every metrics.json value in the summary, one key per figure, the OOD ROC curves
    as a W&B plot, a table of per-image scores, and the checkpoints as an artifact when asked."""

    def __init__(
        self,
        *args: Any,
        mode: str | None = None,
        log_model: bool = False,
        score_rows: int = 1000,
        roc_points: int = 200,
        **kwargs: Any,
    ) -> None:
        # Checkpoints are uploaded here, from the run folder (`log_model`): the project's checkpoint
        # callbacks are its own, not the ModelCheckpoint that Lightning's upload follows.
        if kwargs.get("tags"):  # W&B refuses tags longer than 64 characters
            kwargs["tags"] = [str(tag)[:64] for tag in kwargs["tags"]]
        super().__init__(*args, log_model=False, mode=mode, **kwargs)
        self.upload_checkpoints, self.score_rows, self.roc_points = log_model, score_rows, roc_points
        self._metrics_defined = False

    @property
    def experiment(self) -> Any:
        if self._experiment is None and rank_zero_only.rank == 0 and self._wandb_init.get("mode") is None:
            self._wandb_init["mode"] = wandb_mode()  # only where a run is started
        run = super().experiment
        if not self._metrics_defined:
            run.define_metric("val/loss", step_metric="trainer/global_step", summary="min")
            self._metrics_defined = True
        return run

    def finish(self, metrics: Mapping[str, Any], figures: Sequence[Path], run_dir: Path) -> None:
        """The run's results as written to its folder, then the end of the W&B run."""
        import wandb

        run = self.experiment
        # Logged once, as results (the summary), not again as history; val/loss keeps its minimum.
        run.summary.update({key: value for key, value in metrics.items() if key != "val/loss"})
        media: dict[str, Any] = {f"figures/{path.stem}": wandb.Image(str(path)) for path in figures}
        scores_file = run_dir / "scores.csv"
        if scores_file.is_file() and "ood/score" in metrics:
            scores = read_scores_csv(scores_file)
            if IN_DISTRIBUTION_SET in scores:
                media["ood/roc"] = self._roc_plot(scores, str(metrics["ood/score"]))
            media["ood/scores"] = self._score_table(scores)
        if media:  # at the run's last step, on the step axis of its curves
            run.log({**media, "trainer/global_step": metrics.get("steps", 0)})
        if self.upload_checkpoints and (checkpoints := run_dir / "checkpoints").is_dir():
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"run_dir": str(run_dir)})
            artifact.add_dir(str(checkpoints))
            run.log_artifact(artifact, aliases=["latest"])
        run.finish()

    def _roc_plot(self, scores: Mapping[str, Mapping[str, list]], score: str) -> Any:
        """Each OOD set's ROC curve against the in-distribution test set, at most `roc_points` each."""
        import wandb

        inside = torch.tensor(scores[IN_DISTRIBUTION_SET][score], dtype=torch.float64)
        rows = []
        for name, columns in scores.items():
            if columns["label"][0] != 1:
                continue
            outside = torch.tensor(columns[score], dtype=torch.float64)
            fpr, tpr, _ = roc(
                torch.cat([inside, outside]),
                torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))]).long(),
            )
            kept = torch.linspace(0, len(fpr) - 1, min(len(fpr), self.roc_points)).round().long()
            rows += [[name, float(f), float(t)] for f, t in zip(fpr[kept], tpr[kept], strict=True)]
        table = wandb.Table(columns=["set", "fpr", "tpr"], data=rows)
        return wandb.plot.line(table, "fpr", "tpr", stroke="set", title=f"ROC ({score})")

    def _score_table(self, scores: Mapping[str, Mapping[str, list]]) -> Any:
        """Per-image scores, at most `score_rows` images, spread evenly over the sets (the first
        sets only when there are more sets than rows)."""
        import wandb

        names = [name for name in next(iter(scores.values())) if name not in ("label", "index")]
        per_set = max(1, self.score_rows // len(scores))
        scores = dict(list(scores.items())[: self.score_rows])
        rows = []
        for set_name, columns in scores.items():
            count = len(columns["index"])
            for row in torch.linspace(0, count - 1, min(count, per_set)).round().long().tolist():
                rows.append(
                    [set_name, columns["label"][row], columns["index"][row]]
                    + [columns[n][row] for n in names]
                )
        return wandb.Table(columns=["set", "label", "index", *names], data=rows)


def finish_runs(
    loggers: Sequence[Any], metrics: dict[str, Any], figures: Sequence[Path], run_dir: Path
) -> None:
    """Send the run's results to each W&B logger, then finish its run."""
    for logger in loggers:
        if isinstance(logger, WandbRunLogger):
            logger.finish(metrics, figures, run_dir)
        elif isinstance(logger, WandbLogger):  # a run folder's config from before WandbRunLogger
            logger.experiment.summary.update(metrics)
            logger.experiment.finish()


def link_job_runs(sweep_dir: Path) -> list[Path]:
    """Link every job's W&B run into the sweep's own wandb/ folder, beside the summary run, so that
    one folder holds the whole sweep: `wandb leet <sweep>/wandb` browses it and
    `wandb sync <sweep>/wandb/offline-run-*` uploads it. Each run stays in its job's folder."""
    runs = [run for run in sorted(sweep_dir.glob("*/wandb/*run-*")) if run.is_dir()]
    if not runs:
        return []
    folder = sweep_dir / "wandb"
    folder.mkdir(exist_ok=True)
    linked = []
    for run in runs:
        link = folder / run.name
        if not (link.is_symlink() or link.exists()):
            link.symlink_to(Path("..") / run.relative_to(sweep_dir), target_is_directory=True)
            linked.append(link)
    return linked


# The columns of the summary run's comparisons table.
COMPARISON_COLUMNS = ["a", "b", "result", "statistic", "value", "ci95_low", "ci95_high"]


def comparison_rows(comparisons: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """A sweep summary's comparisons (src/analysis/comparison.py) as one row per pair, result and
    statistic (`COMPARISON_COLUMNS`; the bounds None where under two runs leave no interval)."""
    rows = []

    def add(compared: Mapping[str, Any], name: str, statistic: str, entry: Mapping[str, Any]) -> None:
        low, high = entry["ci95"] or (None, None)
        rows.append([compared["a"], compared["b"], name, statistic, entry["value"], low, high])

    for compared in comparisons:
        for key, entry in compared["metrics"].items():
            pairing = "paired" if entry["difference"]["paired"] else "unpaired"
            add(compared, key, f"difference of means ({pairing})", entry["difference"])
            if "probability_of_improvement" in entry:
                add(compared, key, "probability of improvement", entry["probability_of_improvement"])
        for key, categories in compared["outcomes"].items():
            for category, entry in categories.items():
                add(compared, f"{key} = {category}", "difference of proportions", entry)
        for family, entry in compared["iqm"].items():
            add(compared, family, "difference of IQMs", entry["difference"])
    return rows


def log_summary(config: DictConfig, sweep_dir: Path, summary: dict[str, Any]) -> None:
    """The sweep's "summary" run (group: the sweep folder's name): the sweep's config, the
    frequency and metric tables with their 95 % intervals, the comparisons of its configurations
    (src/analysis/comparison.py, one row per statistic) and the chart; then the job runs are
    linked beside it (`link_job_runs`)."""
    import wandb
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)  # the sweep's config resolves as its jobs' did
    settings = config.logger.wandb
    with wandb.init(
        project=settings.project,
        group=sweep_dir.name,
        name=f"{sweep_dir.name}-summary",
        job_type="summary",
        tags=list(settings.get("tags") or []),
        dir=str(sweep_dir),
        mode=settings.get("mode") or wandb_mode(),
        config=logged_config(config),
        reinit="create_new",
    ) as run:
        rows = [
            [
                group,
                key,
                value,
                count,
                summary["groups"][group]["frequencies"][key][value],
                *summary["groups"][group]["ci95"][key][value],
            ]
            for group, results in summary["groups"].items()
            for key, counts in results["counts"].items()
            for value, count in counts.items()
        ]
        run.log(
            {
                "summary/frequencies": wandb.Table(
                    columns=["group", "result", "value", "count", "frequency", "ci95_low", "ci95_high"],
                    data=rows,
                ),
                "summary/metrics": wandb.Table(
                    columns=["group", "metric", "mean", "ci95_low", "ci95_high", "std", "min", "max", "n"],
                    data=[
                        [
                            group,
                            key,
                            stats["mean"],
                            *stats["ci95"],
                            stats["std"],
                            stats["min"],
                            stats["max"],
                            stats["n"],
                        ]
                        for group, results in summary["groups"].items()
                        for key, stats in results["metrics"].items()
                    ],
                ),
                "summary/comparisons": wandb.Table(
                    columns=COMPARISON_COLUMNS, data=comparison_rows(summary.get("comparisons", []))
                ),
                "summary/chart": wandb.Image(str(sweep_dir / "summary.png")),
            }
        )
        run.summary.update({"n_jobs": summary["n_jobs"], "n_failed": summary["n_failed"]})
    link_job_runs(sweep_dir)

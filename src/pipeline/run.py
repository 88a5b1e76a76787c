"""The Run: the one owner of a run folder. Training, src.eval and the batched launcher's members
write through it (the resolved config, the loggers, the post-test evaluations declared in the
config, metrics.json, the figures, the closing line and, on failure, error.txt), and whatever reads
run folders (src.score, sweep summaries, results pages) reads them through `read_run`."""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger

from src.data.memory import InMemoryDataModule
from src.errors import UserError
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.models.base import ReconstructionModel
from src.pipeline.callbacks import epoch_metrics
from src.pipeline.checkpoints import load_checkpoint, load_model
from src.pipeline.config import build, save_config
from src.pipeline.loggers import build_loggers
from src.pipeline.process import Interrupted, interrupt_on_signals, prepare_training_process
from src.reporting import tensorboard as tensorboard_reporting
from src.reporting import wandb as wandb_reporting
from src.reporting.figures import run_figures

log = logging.getLogger(__name__)


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a tree, one branch per top-level key (rich)."""
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key).add(Syntax(text, "yaml", background_color="default"))
    rich_print(tree)


def loaded_model(path: Path) -> ReconstructionModel:
    """A checkpoint's model for an evaluation (e.g. a background model), built without touching the
    global random state the evaluations after it start from."""
    with torch.random.fork_rng(devices=[]):
        return load_model(Path(path))[0]


class Run:
    """One run folder `run_dir` for the config `cfg`."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.dir = cfg, run_dir
        self._loggers: list[Logger] | None = None

    def start(self, show: bool = False) -> None:
        """Create the folder and write the resolved config.yaml; print it as a tree with `show`.
        `paths.run_dir`, where callbacks write, is set to this folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if "paths" in self.cfg:
            with open_dict(self.cfg):
                self.cfg.paths.run_dir = str(self.dir)
        save_config(self.cfg, self.dir / "config.yaml")
        if show:
            print_config_tree(self.cfg)

    @property
    def loggers(self) -> list[Logger]:
        """The run's loggers, built once (conf/logger/)."""
        if self._loggers is None:
            self._loggers = build_loggers(self.cfg, self.dir)
        return self._loggers

    def check_evaluations(self) -> None:
        """Before training: each declared evaluation checks its settings (those that can be)."""
        if not self.cfg.test:
            return
        model_class = get_class(self.cfg.model._target_)
        for spec in (self.cfg.get("evaluations") or {}).values():
            evaluation = build(spec)
            if hasattr(evaluation, "check"):
                evaluation.check(self.cfg, model_class)

    def evaluate(self, model: ReconstructionModel, datamodule: InMemoryDataModule) -> EvaluationResult:
        """Every evaluation the config declares (conf/evaluations/), in order, merged."""
        merged = EvaluationResult()
        model.eval()
        context = EvaluationContext(self.dir, bool(self.cfg.figures), self.cfg, loaded_model)
        for spec in (self.cfg.get("evaluations") or {}).values():
            result = build(spec)(model, datamodule, context)
            merged.metrics.update(result.metrics)
            merged.figures += result.figures
        return merged

    def test_and_record(
        self,
        trainer: pl.Trainer,
        model: ReconstructionModel,
        datamodule: InMemoryDataModule,
        metrics: dict[str, Any],
        history: list[dict[str, float]],
    ) -> dict[str, Any]:
        """The test stage (when `test`) and everything after it, for a model just trained or loaded
        from a checkpoint: one code path, so every post-test evaluation reaches every kind of run."""
        if self.cfg.test:
            trainer.test(model, datamodule=datamodule, verbose=False)
            metrics.update(epoch_metrics(trainer))
        if not trainer.is_global_zero:
            return metrics
        return self.record(model, datamodule, metrics, history)

    def record(
        self,
        model: ReconstructionModel,
        datamodule: InMemoryDataModule,
        metrics: dict[str, Any],
        history: list[dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        """The end of every run: the declared evaluations (when `test`), metrics.json, the figures,
        the results and figures to TensorBoard and W&B (whose run is then finished)."""
        figures = []
        # What Lightning logged as the run went (the rest reaches the loggers here).
        logged = {key for key in metrics if key.startswith(("val/", "test/"))}
        if self.cfg.test:
            evaluated = self.evaluate(model, datamodule)
            metrics.update(evaluated.metrics)
            figures += evaluated.figures
        (self.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if self.cfg.figures:
            figures = run_figures(model, datamodule.images("test"), history or [], self.dir) + figures
        tensorboard_reporting.log_results(self.loggers, metrics, figures, logged)
        wandb_reporting.finish_runs(self.loggers, metrics, figures, self.dir)
        return metrics

    def headline(self, metrics: dict[str, Any]) -> str:
        """The closing line: the run folder and the metrics named by `headline` (glob patterns)."""
        patterns = self.cfg.get("headline") or []
        shown = [
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in sorted(metrics.items())
            if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)
        ]
        return f"Run folder {self.dir}" + (": " + ", ".join(shown) if shown else "")

    def checkpoint_to_resume(self) -> str | None:
        """The folder's own last.ckpt when this run is an interrupted job started again in the same
        folder (`resume_in_place`): no metrics.json yet. Its old error.txt is kept aside."""
        last = self.dir / "checkpoints" / "last.ckpt"
        if not self.cfg.get("resume_in_place") or not last.is_file() or (self.dir / "metrics.json").exists():
            return None
        error = self.dir / "error.txt"
        if error.is_file():
            kept = self.dir / "error.before-resume.txt"
            with kept.open("a") as handle:
                handle.write(error.read_text())
            error.unlink()
        log.info("Resuming the interrupted run in %s from %s", self.dir, last)
        return str(last)

    def interrupted(self, interrupt: Interrupted) -> Path:
        """error.txt for a job stopped by a signal: when, what is kept, and how to resume."""
        where = f" at epoch {interrupt.epoch}, step {interrupt.step}" if interrupt.step is not None else ""
        last = self.dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            saved = load_checkpoint(last)
            resume = (
                f"The state after epoch {saved['epoch']} (step {saved['global_step']}) is in {last}: resume "
                f"with the same command and ckpt_path={last}; the result equals an uninterrupted run's."
            )
        else:
            resume = "No epoch had finished, so there is no checkpoint to resume from: run the job again."
        path = self.dir / "error.txt"
        self.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"Interrupted by {interrupt.signal}{where} (exit status {interrupt.status}); no metrics.json "
            f"was written. {resume} Every file written before is kept.\n"
        )
        return path

    def fail(self) -> Path:
        """Write the current exception's traceback to error.txt beside whatever the run wrote."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "error.txt"
        path.write_text(traceback.format_exc())
        return path


@dataclass
class RunRecord:
    """What a finished (or failed) run folder holds: its metrics (None if it never finished), the
    last line of its error.txt, and the command-line overrides Hydra recorded for it."""

    dir: Path
    metrics: dict[str, Any] | None
    error: str | None
    overrides: list[str]

    @property
    def finished(self) -> bool:
        """Finished and never failed: metrics.json and no error.txt (a run that failed after writing
        its metrics, e.g. in its W&B upload, did not finish)."""
        return self.metrics is not None and self.error is None

    def config(self) -> DictConfig:
        """The run's resolved config.yaml."""
        return OmegaConf.load(self.dir / "config.yaml")


def read_run(run_dir: Path) -> RunRecord:
    """The record of a run folder, as the Run wrote it."""
    metrics_file, error_file = run_dir / "metrics.json", run_dir / "error.txt"
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    metrics, error = None, None
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as problem:
            error = f"{metrics_file} is corrupt ({problem})"
    if error_file.is_file():
        lines = error_file.read_text().strip().splitlines()
        error = lines[-1] if lines else f"{error_file} is empty"
    elif metrics is None and error is None:
        error = "no metrics.json and no error.txt (killed?)"
    overrides = (yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else []
    return RunRecord(run_dir, metrics, error, overrides)


def run_job(
    job: Callable[[DictConfig, Path], dict[str, Any]], cfg: DictConfig, run_dir: Path, in_sweep: bool
) -> float | None:
    """Run `job` into `run_dir`. A failure leaves error.txt beside whatever the run already wrote;
    a single run then raises, while a sweep job returns None so that the other jobs go on and the
    sweep summary counts it as failed. A user error (src/errors.py) is one line on stderr and exit
    status 2, its traceback in error.txt. A SIGTERM or SIGINT stops the job, and a sweep with it, with
    error.txt saying where and how to resume, and exit status 143 or 130. Returns the validation
    loss, which sweepers such as Optuna minimise."""
    prepare_training_process()
    run = Run(cfg, run_dir)
    try:
        with interrupt_on_signals():
            metrics = job(cfg, run_dir)
    except UserError as error:
        error_file = run.fail()
        wandb_reporting.finish_open_run(exit_code=2)
        if in_sweep:
            log.error("Job %s failed: %s (traceback in %s)", run_dir, error, error_file)
            return None
        print(f"error: {error} (traceback in {error_file})", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as interrupt:
        error_file = run.interrupted(interrupt)
        wandb_reporting.finish_open_run(exit_code=interrupt.status)
        log.error("Job %s %s; see %s", run_dir, interrupt, error_file)
        raise SystemExit(interrupt.status) from None
    except Exception as error:
        error_file = run.fail()
        wandb_reporting.finish_open_run(exit_code=1)
        if not in_sweep:
            raise
        log.error("Job %s failed (%s: %s); see %s", run_dir, type(error).__name__, error, error_file)
        return None
    wandb_reporting.finish_open_run(exit_code=0)  # a logger the run did not finish (none should be left)
    log.info(run.headline(metrics))
    return metrics.get("val/loss")

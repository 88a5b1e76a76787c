"""The Run: the one owner of a run folder. `run_job` creates a job's Run and hands it to the job
(training, src.eval, a batched member), which writes through it (the resolved config, the loggers,
metrics.json, the closing line and, on failure, error.txt; src/pipeline/finishing.py finishes every
kind of run through it), and whatever reads run folders (src.score, sweep summaries, results pages)
reads them through `read_run`."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import Logger

from src.errors import ConfigValueError, UserError
from src.files import remove_partials, write_text_atomic
from src.models.base import ReconstructionModel
from src.pipeline.checkpoints import CheckpointError, check_resumable, load_checkpoint, load_model
from src.pipeline.config import build, config_yaml, load_run_config
from src.pipeline.loggers import build_loggers
from src.pipeline.process import Interrupted, interrupt_on_signals, prepare_training_process
from src.reporting import wandb as wandb_reporting
from src.values import parse_bool

log = logging.getLogger(__name__)

# What a job started again finds in the folder of an earlier start of it (`earlier_state`), and
# what it does: NEW trains, FINISHED is skipped, INTERRUPTED resumes from its last.ckpt, FAILED
# trains afresh, OTHER (a finished or interrupted run of another config) is refused, unless
# `overwrite=true` replaces it.
NEW, FINISHED, INTERRUPTED, FAILED, OTHER = "new", "finished", "interrupted", "failed", "other"
# Hydra's record of a job in its folder: the composed config (unresolved), its overrides, Hydra's
# own settings. Written by `Run.start` (conf/hydra/default.yaml sets hydra.output_subdir=null).
RECORD = ".hydra"
# The first words of an interrupted job's error.txt (`Run.interrupted`).
INTERRUPTED_BY = "Interrupted by"


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
        # `job_cfg`: the config the job was started with, as Hydra composed it (src.eval's job then
        # takes the evaluated run's as `cfg`).
        self.cfg, self.job_cfg, self.dir = cfg, cfg, run_dir
        self._loggers: list[Logger] | None = None

    def start(
        self,
        show: bool = False,
        resolved: Callable[[], dict[str, Any]] | None = None,
        record: dict[str, str] | None = None,
    ) -> None:
        """Create the folder and write Hydra's record of the job (.hydra/: `record`, file name to
        text, when the caller has it, e.g. a batched member; else `hydra_record` of `job_cfg`) and
        the resolved config.yaml (`config_text`); print it as a tree with `show`. Called by the job
        that `run_job` runs, once it has decided what an earlier run in the folder means
        (`earlier_state`): a command refused there leaves that run's folder as it was."""
        self.write_record(record)
        write_text_atomic(self.dir / "config.yaml", self.config_text(resolved))
        if show:
            print_config_tree(self.cfg)

    def write_record(self, record: dict[str, str] | None = None) -> None:
        """Hydra's record of the job in .hydra/: `record` (file name to text) when the caller has
        it, else `hydra_record` of `job_cfg`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, text in (hydra_record(self.job_cfg) if record is None else record).items():
            write_text_atomic(self.dir / RECORD / name, text)

    def config_text(self, resolved: Callable[[], dict[str, Any]] | None = None) -> str:
        """The resolved config as config.yaml holds it, `paths.run_dir` (where callbacks write) set to
        this folder. `resolved` gives the resolved values when the caller has a faster way to them
        (a batched chunk's `MemberConfigs`)."""
        if "paths" in self.cfg:
            with read_write(self.cfg), open_dict(self.cfg):
                self.cfg.paths.run_dir = str(self.dir)
        return config_yaml(OmegaConf.to_container(self.cfg, resolve=True) if resolved is None else resolved())

    def earlier(self) -> str:
        """What an earlier start of this job left in the folder (`earlier_state`), its composed
        config (.hydra/config.yaml) compared with this job's."""
        return earlier_state(self.dir, lambda: not self.changed_keys())

    def changed_keys(self) -> list[str]:
        """Where this job's composed config differs from the one an earlier start recorded in the
        folder (`config_changes`)."""
        return config_changes(self.dir, OmegaConf.to_container(self.job_cfg, resolve=False))

    def set_aside(self) -> None:
        """Before the job trains afresh where an earlier start failed: that start's metrics.json
        and checkpoints are removed, its error.txt kept (appended to error.before-rerun.txt)."""
        self.keep_error("error.before-rerun.txt")
        (self.dir / "metrics.json").unlink(missing_ok=True)
        shutil.rmtree(self.dir / "checkpoints", ignore_errors=True)

    def clear(self) -> None:
        """Before the job replaces an earlier run of the folder (`overwrite=true`): everything that
        run wrote is removed; its lock (this job's) stays, and the log files this process writes
        into it (Hydra's job log) are emptied, not removed, to go on logging."""
        logs = {
            Path(handler.baseFilename)
            for handler in logging.getLogger().handlers
            if isinstance(handler, logging.FileHandler)
        }
        for entry in self.dir.iterdir():
            if entry.name == LOCK:
                continue
            if entry.resolve() in logs:
                os.truncate(entry, 0)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def keep_error(self, name: str) -> None:
        """The folder's error.txt, from an earlier start of the job, appended to `name` and removed."""
        error = self.dir / "error.txt"
        if error.is_file():
            with (self.dir / name).open("a") as handle:
                handle.write(error.read_text())
            error.unlink()

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

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """metrics.json: the run's results (written once, when it has finished)."""
        write_text_atomic(self.dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))

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
        folder (`earlier_state` INTERRUPTED; `run_job` set a failed start's aside, and kept an
        interrupted one's error.txt as error.before-resume.txt)."""
        last = self.dir / "checkpoints" / "last.ckpt"
        if not self.cfg.get("resume_in_place") or not last.is_file() or (self.dir / "metrics.json").exists():
            return None
        remove_partials(last.parent)  # what a kill during a checkpoint's writing left
        check_resumable(last)
        log.info("Resuming the interrupted run in %s from %s", self.dir, last)
        return str(last)

    def interrupted(self, interrupt: Interrupted, resume: str) -> str:
        """error.txt for a job stopped by a signal: when, what is kept, and how to resume (`resume`,
        from `how_to_resume`)."""
        where = f" at epoch {interrupt.epoch}, step {interrupt.step}" if interrupt.step is not None else ""
        written = (
            "its metrics.json was written, but not everything after it"
            if (self.dir / "metrics.json").exists()
            else "no metrics.json was written"
        )
        return self._write_error(
            f"{INTERRUPTED_BY} {interrupt.signal}{where} (exit status {interrupt.status}); {written}. "
            f"{resume} Every file written before is kept.\n"
        )

    def fail(self) -> str:
        """Write the current exception's traceback to error.txt beside whatever the run wrote."""
        return self._write_error(traceback.format_exc())

    def _write_error(self, text: str) -> str:
        """error.txt with `text`, written whole or not at all; where the text went (the file, or
        stderr when the file cannot be written, e.g. on a full disk)."""
        path = self.dir / "error.txt"
        try:
            write_text_atomic(path, text)
        except OSError as problem:
            print(text, file=sys.stderr)
            return f"the text above ({path} could not be written: {problem})"
        return str(path)


def how_to_resume(checkpoint: Path, sweep_dir: Path | None = None) -> str:
    """How an interrupted job resumes, for its error.txt: from the state `checkpoint` holds (its own
    last.ckpt, or a batched member's chunk's), with the same command: a single run's started into
    its folder again (hydra.run.dir), or into a new one with ckpt_path=<checkpoint>; a sweep's with
    hydra.sweep.dir=<sweep_dir>, which resumes every job of the sweep that did not finish."""
    checkpoint = checkpoint.absolute()
    command = (
        f"the same command and hydra.sweep.dir={sweep_dir.absolute()} (the sweep started again into "
        "its folder resumes each job that did not finish)"
        if sweep_dir is not None
        else f"the same command started into this folder again (hydra.run.dir={checkpoint.parent.parent}), "
        f"or into a new folder with the same command and ckpt_path={checkpoint}"
    )
    try:
        saved = load_checkpoint(checkpoint) if checkpoint.is_file() else None
    except CheckpointError as error:
        return f"{error}"
    if saved is None:
        again = f"{command} trains it afresh" if sweep_dir is not None else "run the job again"
        return f"No epoch had finished, so there is no checkpoint to resume from: {again}."
    return (
        f"The state after epoch {saved['epoch']} (step {saved['global_step']}) is in {checkpoint}: resume "
        f"with {command}; the result equals an uninterrupted run's."
    )


def sweep_command(sweep_dir: Path) -> str:
    """The command that starts this process's sweep again into its folder `sweep_dir`, where it skips
    the finished jobs and resumes the others: its command line with hydra.sweep.dir=<sweep_dir>."""
    arguments = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
    return "python -m src.run " + shlex.join([*arguments, f"hydra.sweep.dir={sweep_dir.absolute()}"])


# A run folder's lock: "<pid> <host>" of the process writing it, there while it runs.
LOCK = ".lock"


class NothingWritten(UserError):
    """A job refused before it has written anything into its folder (which may be another run's)."""


class FolderInUse(NothingWritten):
    """A run folder another running process is writing."""


def _first_process() -> bool:
    """Whether this is a run's first process (of several under DDP: the one that started the rest)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _holder(lock: Path) -> tuple[int, str] | None:
    """The pid and host in a lock file; None when it holds neither (being written, or damaged)."""
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def folder_lock(run_dir: Path) -> Iterator[None]:
    """Within the block, `run_dir` is this process's: <run>/.lock holds its pid and host, made
    atomically, and is removed at the end. A lock whose process no longer runs on this host is
    taken over (a killed run started again); a lock from another host is taken over too, with a
    warning (its process cannot be asked: a requeued cluster job). Another live process's lock:
    FolderInUse, before anything in the folder is touched. The other processes of a multi-process
    run (Lightning's DDP ranks, started with LOCAL_RANK > 0) work in the folder its first holds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not _first_process():
        yield
        return
    lock, here = run_dir / LOCK, socket.gethostname()
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and holder[1] == here and holder[0] != os.getpid() and _running(holder[0]):
                raise FolderInUse(
                    f"{run_dir} is in use by pid {holder[0]} (its {LOCK}): wait for that run to end, or "
                    "start this one in another folder (hydra.run.dir=<folder>)"
                ) from None
            if holder is not None and holder[1] != here:
                log.warning("Taking over %s from pid %d on host %s", lock, *holder)
            lock.unlink(missing_ok=True)  # its process has ended
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()} {here}\n")
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


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
        return load_run_config(self.dir / "config.yaml")


def read_run(run_dir: Path) -> RunRecord:
    """The record of a run folder, as the Run wrote it."""
    metrics_file, error_file = run_dir / "metrics.json", run_dir / "error.txt"
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    metrics, error = None, None
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as problem:
            error = f"{metrics_file} is corrupt ({problem})"
        if metrics is not None and not isinstance(metrics, dict):
            metrics, error = None, f"{metrics_file} is corrupt (not a mapping of metrics)"
    if error_file.is_file():
        lines = error_file.read_text(errors="replace").strip().splitlines()
        error = lines[-1] if lines else f"{error_file} is empty"
    elif metrics is None and error is None:
        error = "no metrics.json and no error.txt (killed?)"
    return RunRecord(run_dir, metrics, error, read_overrides(overrides_file))


def read_overrides(path: Path) -> list[str]:
    """A job's command-line overrides as Hydra recorded them (.hydra/overrides.yaml; none if the
    file is absent), refused in one line when the file is not a YAML list of texts."""
    if not path.is_file():
        return []
    try:
        overrides = yaml.safe_load(path.read_bytes()) or []
    except yaml.YAMLError as problem:
        overrides = problem
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ConfigValueError(
            f"{path} is not a YAML list of overrides (damaged?): restore it, e.g. ['seed=0'] as the job was "
            f"started, or move the job folder {path.parent.parent} out of the sweep."
        )
    return overrides


def earlier_state(run_dir: Path, same_config: Callable[[], bool]) -> str:
    """What an earlier start of a job left in `run_dir`: NEW (no config.yaml and no error.txt: it
    never began), FINISHED (its metrics.json complete, no error.txt), INTERRUPTED (a
    checkpoints/last.ckpt, no metrics.json, no error.txt but an interruption's), each only with
    `same_config()` and else OTHER (a result or a resumable state of another config); the same for
    no config.yaml and an interruption's error.txt (stopped before it began: a batched member while
    its chunk trained, its .hydra/ recorded); else FAILED (a failure, or a run killed before its
    first checkpoint, of any config)."""
    error = run_dir / "error.txt"
    if not (run_dir / "config.yaml").is_file():
        if not error.is_file():
            return NEW
        if not error.read_text().startswith(INTERRUPTED_BY):
            return FAILED
        return INTERRUPTED if same_config() else OTHER
    record = read_run(run_dir)
    interrupted = (
        not (run_dir / "metrics.json").exists()
        and (run_dir / "checkpoints" / "last.ckpt").is_file()
        and (not error.is_file() or error.read_text().startswith(INTERRUPTED_BY))
    )
    if not (record.finished or interrupted):
        return FAILED
    if not same_config():
        return OTHER
    return FINISHED if record.finished else INTERRUPTED


def kept(state: str, cfg: DictConfig) -> bool:
    """Whether a job's earlier start stands as its result, and the job is skipped: it finished with
    this config (`earlier_state` FINISHED), and `overwrite` is not true."""
    return state == FINISHED and not parse_bool("overwrite", cfg.get("overwrite", False))


def hydra_record(cfg: DictConfig) -> dict[str, str]:
    """Hydra's record of the current job, as Hydra's job runner would write it into .hydra/ (none
    outside a Hydra job)."""
    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.instance().cfg
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra),
        "overrides.yaml": OmegaConf.to_yaml(hydra.hydra.overrides.task),
    }


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The composed config an earlier start recorded in `run_dir` (.hydra/config.yaml); None where
    there is none, or it is not a YAML mapping."""
    path = run_dir / RECORD / "config.yaml"
    try:
        loaded = yaml.load(path.read_bytes(), getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


# Keys that say how a command runs, not what it computes: they may differ between two starts of a job.
RUN_CONTROLS = ("overwrite", "resume_in_place", "print_config")


def config_changes(run_dir: Path, composed: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between `composed` (a job's composed config) and the one
    recorded in `run_dir` (`recorded_config`; ["(the recorded config)"] where there is none), the
    `RUN_CONTROLS` left out."""
    recorded = recorded_config(run_dir)
    if recorded is None:
        return [f"{RECORD}/config.yaml (missing or damaged)"]
    return changed_keys(
        {k: v for k, v in recorded.items() if k not in RUN_CONTROLS},
        {k: v for k, v in composed.items() if k not in RUN_CONTROLS},
    )


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested configs (a key one lacks counts)."""
    if old == new:
        return []
    keys = []
    for key in sorted(old.keys() | new.keys(), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif key not in old or key not in new or a != b:
            keys.append(f"{prefix}{key}")
    return keys


class FolderHoldsAnotherRun(NothingWritten):
    """A job started into a folder holding a finished or interrupted run of another config."""


def another_run(run_dir: Path, keys: list[str]) -> FolderHoldsAnotherRun:
    """The one-line refusal of a job whose folder holds another config's run (`OTHER`)."""
    shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
    return FolderHoldsAnotherRun(
        f"{run_dir} holds a run of another config (it differs in {shown}); "
        "nothing was changed: start this one in another folder, run the earlier command to use it, or "
        "give overwrite=true to replace it"
    )


def run_job(
    job: Callable[[Run], dict[str, Any]],
    cfg: DictConfig,
    run_dir: Path,
    in_sweep: bool,
    quiet: bool = False,
    earlier: str | None = None,
) -> float | None:
    """Run `job` on the Run of `run_dir`. A failure leaves error.txt beside whatever the run already
    wrote; a single run then raises, while a sweep job returns None so that the other jobs go on and
    the sweep summary counts it as failed. A user error (src/errors.py) is one line on stderr and
    exit status 2, its traceback in error.txt. A folder another running process holds
    (`folder_lock`) is refused in one line, exit status 2, without writing into it. A SIGTERM or
    SIGINT stops the job, and a sweep with it (`Interrupted` goes on up; uncaught, it exits with
    status 143 or 130), with error.txt saying where and how to resume. The closing line is logged
    unless `quiet` (a batched sweep's members: the sweep has its own). Returns the validation loss,
    which sweepers such as Optuna minimise. A folder an earlier start of the job left
    (`earlier_state`; `earlier` where the caller has found it already, e.g. a batched launcher from
    the members' own configs): finished with this config, the job is skipped; of another config, it
    is refused (`overwrite=true` replaces it); failed, the job trains afresh; interrupted, it resumes
    (`Run.checkpoint_to_resume`), the interruption's error.txt kept as error.before-resume.txt."""
    prepare_training_process()
    run = Run(cfg, run_dir)
    try:
        with folder_lock(run_dir), interrupt_on_signals():
            if earlier is None:
                earlier = run.earlier() if _first_process() else NEW
            try:
                replace = parse_bool("overwrite", cfg.get("overwrite", False))
            except ConfigValueError as error:
                raise NothingWritten(str(error)) from None
            if earlier == OTHER and not replace:
                raise another_run(run_dir, run.changed_keys())
            if kept(earlier, cfg):  # printed, not logged: the job's log file is the finished run's
                metrics = read_run(run_dir).metrics
                if not in_sweep:  # a sweep says how many of its jobs it skips
                    print(f"{run_dir} had finished with this config: nothing to do", end="")
                    print(" (overwrite=true trains it again)")
                    print(run.headline(metrics))
                return metrics.get("val/loss")
            if earlier in (OTHER, FINISHED):
                run.clear()
            elif earlier == FAILED or (earlier == INTERRUPTED and not cfg.get("resume_in_place")):
                run.set_aside()
            elif earlier == INTERRUPTED:
                run.keep_error("error.before-resume.txt")
            metrics = job(run)
    except NothingWritten as error:  # e.g. another run's folder: refused before anything is written
        if in_sweep:
            log.error("Job %s not run: %s", run_dir, error)
            return None
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as error:
        error_file = run.fail()
        wandb_reporting.finish_open_run(exit_code=2)
        if in_sweep:
            log.error("Job %s failed: %s (traceback in %s)", run_dir, error, error_file)
            return None
        print(f"error: {error} (traceback in {error_file})", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as interrupt:
        sweep_dir = Path(HydraConfig.get().sweep.dir) if in_sweep else None
        resume = how_to_resume(run_dir / "checkpoints" / "last.ckpt", sweep_dir)
        error_file = run.interrupted(interrupt, resume)
        wandb_reporting.finish_open_run(exit_code=interrupt.status)
        log.error("Job %s %s; see %s", run_dir, interrupt, error_file)
        raise
    except Exception as error:
        error_file = run.fail()
        wandb_reporting.finish_open_run(exit_code=1)
        if not in_sweep:
            raise
        log.error("Job %s failed (%s: %s); see %s", run_dir, type(error).__name__, error, error_file)
        return None
    wandb_reporting.finish_open_run(exit_code=0)  # a logger the run did not finish (none should be left)
    if not quiet:
        log.info(run.headline(metrics))
    return metrics.get("val/loss")

"""Shared test helpers: where the project and the shared datasets are, small fast overrides, and
`python -m src.run` in a subprocess."""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_DATASETS / "MNIST" / "raw").is_dir()
    or not (SHARED_DATASETS / "FashionMNIST" / "raw").is_dir(),
    reason=f"real MNIST/Fashion-MNIST not found in {SHARED_DATASETS} "
    "(see docs/configuration.md, 'Data files and offline use')",
)

# Small and fast: a handful of steps, no progress bar, no config tree.
FAST = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "print_config=false",
    # The OOD evaluation on at most 64 images per set (MNIST's would otherwise score 65000), its
    # neighbour baselines searching 500 training images.
    "ood.max_images=64",
    "ood.neighbours.reference_images=500",
    "logger=none",
]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def src_run(*arguments: str, cwd: Path = PROJECT_ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m src.run <arguments>` in a fresh process (W&B offline), its output captured."""
    command = [sys.executable, "-m", "src.run", *arguments]
    return subprocess.run(
        command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout
    )


def src_run_started(*arguments: str, cwd: Path = PROJECT_ROOT) -> subprocess.Popen:
    """`python -m src.run <arguments>` started and left running (stdout and stderr together)."""
    command = [sys.executable, "-m", "src.run", *arguments]
    return subprocess.Popen(
        command, cwd=cwd, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@functools.cache
def slurm_problem() -> str | None:
    """Why the tests that need a SLURM cannot run here (`sinfo` does not answer), or None; asked once
    (a sinfo without a controller takes seconds to give up)."""
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no SLURM here ({error}): start one with `sudo bash scripts/slurm-up.sh`"
    if answer.returncode != 0 or not answer.stdout.strip():
        return f"sinfo does not answer ({answer.stderr.strip()}): start SLURM with scripts/slurm-up.sh"
    return None


# Each dataset at a few batches (MNIST's from ../shared/datasets).
SMALL_DATA = {
    "lines": ["data.n_train=64", "data.n_val=16", "data.n_test=16"],
    "lines2x2": [],
    "mnist": [
        f"data.root={SHARED_DATASETS}",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ],
}
SMALL_DATA["fashion_mnist"] = SMALL_DATA["mnist"]
# The test metrics every model reports, and those the VAE and the VAE-GAN add.
TEST_KEYS = {"test/recon_mse", "test/recon_bce", "test/cosine_similarity", "test/loss"}
VAE_KEYS = {"test/kl", "test/neg_elbo"}
VAEGAN_KEYS = VAE_KEYS | {"test/disc_feature_error"}
# Tiny line images in shuffled minibatches of 8: many quick steps.
TINY_LINES = [
    "data=lines",
    "data.image_size=8",
    "data.n_train=32",
    "data.n_val=16",
    "data.n_test=16",
    "data.batch_size=8",
    "model.net.hidden_dims=[8]",
]


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    """A run folder's history.csv without its timing column (train/images_per_s differs run to run)."""
    with (run_dir / "history.csv").open(newline="") as handle:
        return [
            {key: value for key, value in row.items() if key != "train/images_per_s"}
            for row in csv.DictReader(handle)
        ]


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under `root` by its path relative to it, with its content's hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def python_m(
    module: str, *arguments: str, cwd: Path = PROJECT_ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m <module> <arguments>` (src.score, src.eval, ...) in a fresh process, as a user
    runs it, its output captured."""
    command = [sys.executable, "-m", module, *arguments]
    return subprocess.run(
        command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout
    )


def entry_point(module: str, arguments: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`python -m <module> <arguments>` run in this process, as `python -m` runs it (its own argv,
    its exit status): the status and stderr. Cheaper than a process for the many cases of a class."""
    status, _, stderr = entry_point_output(module, arguments, capsys)
    return status, stderr


def entry_point_output(
    module: str, arguments: list[str], capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """`entry_point`, with its stdout: the status, stdout and stderr."""

    argv = sys.argv
    sys.argv = [module, *arguments]
    try:
        runpy.run_module(module, run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_failure(status: int, stderr: str, message: str, expected: int = 2) -> str:
    """Assert that a command failed with status `expected`, no traceback, and `message` in the last
    line of its stderr; that line."""
    assert status == expected, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert message in last, stderr[-3000:]
    return last


class PauseOnce(Callback):
    """A Hydra callback that holds a sweep at one point for a test's signal to land there: at `hook`
    (on_job_start, on_job_end or on_multirun_end) of job number `job` (any, if None) it creates
    `marker` and waits. Once: the same command started again finds `marker` and goes on.
    `+hydra.callbacks.pause._target_=tests.helpers.PauseOnce +hydra.callbacks.pause.hook=...`"""

    def __init__(self, hook: str, marker: str, job: int | None = None) -> None:
        self.hook, self.marker, self.job = hook, Path(marker), job

    def _pause(self, hook: str, config: DictConfig) -> None:
        if hook != self.hook or self.marker.exists():
            return
        if self.job is not None and config.hydra.job.num != self.job:
            return
        self.marker.touch()
        time.sleep(600)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pause("on_job_start", config)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pause("on_job_end", config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pause("on_multirun_end", config)

"""Every value that could fail, or be silently ignored, after training is refused before it, through
`python -m src.run` as a user types it: exit status 2, one line naming the key and the fix, no
traceback, no training, and no file already written touched. Two runs into one folder, and a sweep
whose jobs would share folders, are refused the same way; `src.summary` says when a sweep has fewer
job folders than its multirun.yaml names."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from src.pipeline.run import LOCK
from tests.helpers import (
    FAST,
    entry_point,
    entry_point_output,
    fingerprint,
    one_line_failure,
    src_run_started,
)

pytestmark = pytest.mark.slow

SMALL = ["data=lines", "data.n_train=64", "data.n_val=16", "data.n_test=16", *FAST]
SWEEP = ["-m", "experiment=census_ca_2x2", "trainer.max_epochs=2", "logger=none", "hydra/launcher=batched"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.n_train=0"], "data.n_train must be a whole number >= 1 (images in the train set), got 0"),
        (["data.n_val=0"], "data.n_val must be a whole number >= 1"),
        (["data.n_test=-1"], "data.n_test must be a whole number >= 1 (images in the test set), got -1"),
        (["ood.max_images=-1"], "ood.max_images must be a whole number >= 1 (null: every image), got -1"),
        (["ood.max_images=0"], "ood.max_images must be a whole number >= 1 (null: every image), got 0"),
        (
            ["trainer.precision=64-true"],
            "trainer.precision=64-true cannot run the evaluations after training",
        ),
        (["trainer.precision=16-true"], "choose trainer.precision=32-true, bf16-mixed or 16-mixed"),
        (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 trains nothing"),
        (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0 trains nothing"),
        (["+anything=1"], "anything is read by nothing"),
        (["paths.run_dir=/tmp/x"], "paths.run_dir is the run's own folder, set by the run"),
        (["+paths.run_dir=/tmp/x"], "paths.run_dir is already a config key: set it with paths.run_dir=..."),
        (["ood.threshold.method=fixed", "ood.threshold.value=nan"], "ood.threshold.value must be a finite"),
        (["ood.threshold.percentile=nan"], "ood.threshold.percentile must be in [0, 100], got nan"),
    ],
    ids=lambda case: " ".join(case) if isinstance(case, list) else "",
)
def test_a_value_that_would_fail_after_training_is_refused_before_it(
    finished_run: Path, capsys, overrides: list[str], message: str
) -> None:
    root = finished_run.parent.parent
    before = fingerprint(root)
    status, stderr = entry_point("src.run", [*SMALL, *overrides, f"paths.output_root={root}"], capsys)
    one_line_failure(status, stderr, message)
    after = fingerprint(root)
    assert {key: after[key] for key in before} == before
    assert not list(root.glob("runs/*/checkpoints"))[1:]  # only the finished_run's: nothing trained


def test_the_precision_that_ran_is_recorded(tmp_path: Path, capsys) -> None:
    """16-mixed has no CPU kernels: Lightning runs bf16-mixed instead, and metrics.json says so."""
    folder = tmp_path / "run"
    arguments = [*SMALL, "trainer.accelerator=cpu", "trainer.precision=16-mixed", f"hydra.run.dir={folder}"]
    status, stderr = entry_point("src.run", arguments, capsys)
    assert status == 0, stderr[-2000:]
    assert json.loads((folder / "metrics.json").read_text())["precision"] == "bf16-mixed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["seed=0,1", "hydra.launcher.max_members=0"],
            "hydra.launcher.max_members must be a whole number >= 1",
        ),
        (["seed=0,null"], "seed=null in a batched sweep: each seed trained together needs its own seed"),
        (
            ["seed=0,1", "hydra.sweep.subdir=same"],
            "hydra.sweep.subdir=same puts the jobs [seed=0] and [seed=1]",
        ),
        (
            ["seed=0,1", "model.optimizer.lr=0.1,0.2", "hydra.sweep.subdir=seed_${seed}"],
            "hydra.sweep.subdir=seed_${seed} puts the jobs",
        ),
    ],
    ids=["max_members=0", "seed=null", "subdir constant", "subdir of the seed alone"],
)
def test_a_sweep_that_would_fail_after_training_is_refused_before_it(
    tmp_path: Path, capsys, overrides: list[str], message: str
) -> None:
    status, stderr = entry_point("src.run", [*SWEEP, *overrides, f"hydra.sweep.dir={tmp_path}"], capsys)
    one_line_failure(status, stderr, message)
    assert not list(tmp_path.glob("*/.hydra")) and not (tmp_path / "batched").exists()


def test_src_summary_says_when_job_folders_are_missing(tmp_path: Path, capsys) -> None:
    status, stderr = entry_point("src.run", [*SWEEP, "seed=0,1,2", f"hydra.sweep.dir={tmp_path}"], capsys)
    assert status == 0, stderr[-2000:]
    shutil.rmtree(tmp_path / "2")
    status, stdout, _ = entry_point_output("src.summary", [str(tmp_path)], capsys)
    assert status == 0
    assert "multirun.yaml names 3 jobs, but only 2 job folders were found" in stdout
    assert json.loads((tmp_path / "summary.json").read_text())["n_named"] == 3


def test_a_second_run_into_a_folder_in_use_is_refused_at_once(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    first = src_run_started(*SMALL, "trainer.max_epochs=2000", f"hydra.run.dir={folder}")
    try:
        deadline = time.monotonic() + 120
        while not (folder / "config.yaml").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.05)
        config = (folder / "config.yaml").read_bytes()
        status, stderr = entry_point("src.run", [*SMALL, f"hydra.run.dir={folder}"], capsys)
        one_line_failure(status, stderr, f"{folder} is in use by pid {first.pid} (its {LOCK})")
        assert (folder / "config.yaml").read_bytes() == config and not (folder / "error.txt").exists()
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    ended = subprocess.Popen(["true"])  # a process that has ended, for its pid
    ended.wait()
    (folder / LOCK).write_text(f"{ended.pid} {socket.gethostname()}\n")
    status, stderr = entry_point("src.run", [*SMALL, f"hydra.run.dir={folder}"], capsys)
    assert status == 0, stderr[-2000:]
    assert (folder / "metrics.json").is_file() and not (folder / LOCK).exists()

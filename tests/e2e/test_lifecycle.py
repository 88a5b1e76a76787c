"""A run's lifecycle under signals, as a cluster delivers them: a killed run exits non-zero, says
where it stopped and how to resume, and resumes to the uninterrupted result; a killed sweep is
still summarised."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, TINY_LINES, history_rows, src_run, src_run_started

pytestmark = pytest.mark.slow

# A VAE (sampled z) on shuffled minibatches, validated every epoch: resuming must restore weights,
# optimiser, loops and random streams.
BASE = ["model=vae", *TINY_LINES, *FAST[1:], "figures=false", "test=false"]
LONG = [*BASE, "trainer.max_epochs=300"]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_with_its_status_and_a_way_to_resume(
    tmp_path: Path, signum: int, status: int
) -> None:
    killed = tmp_path / "killed"
    process = src_run_started(*LONG, f"hydra.run.dir={killed}")
    _wait_for(killed / "checkpoints" / "last.ckpt", process)
    time.sleep(0.5)  # a few more epochs: the signal arrives mid-training
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == status, output[-3000:]
    error = (killed / "error.txt").read_text()
    name = signal.Signals(signum).name
    assert error.startswith(f"Interrupted by {name} at epoch ") and f"(exit status {status})" in error
    assert f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}" in error
    assert not (killed / "metrics.json").exists()
    assert (killed / "config.yaml").is_file() and (killed / "history.csv").is_file()

    if signum != signal.SIGTERM:
        return
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    checkpoint = killed / "checkpoints" / "last.ckpt"
    assert src_run(*LONG, f"ckpt_path={checkpoint}", f"hydra.run.dir={resumed}").returncode == 0
    assert src_run(*LONG, f"hydra.run.dir={whole}").returncode == 0
    got, expected = (json.loads((folder / "metrics.json").read_text()) for folder in (resumed, whole))
    assert got["steps"] == expected["steps"] == 300 * 4
    for key in ("train/loss", "val/loss", "train/kl"):
        assert got[key] == expected[key], key
    resumed_weights, whole_weights = _weights(resumed), _weights(whole)
    for key, value in whole_weights.items():
        assert torch.equal(resumed_weights[key], value), key
    # The epochs before the interruption came with the checkpoint: the whole history, as uninterrupted.
    assert len(history_rows(whole)) == 300 and history_rows(resumed) == history_rows(whole)


def test_a_killed_sweep_is_summarised_and_exits_non_zero(tmp_path: Path) -> None:
    process = src_run_started(
        "-m", *BASE, "seed=0,1,2", "trainer.max_epochs=40,300", f"paths.output_root={tmp_path}"
    )
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob("multiruns/*/1/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output[-3000:]
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 2 and summary["n_failed"] == 1  # job 0 ended; job 1 was interrupted
    assert summary["failed"]["1"].startswith("Interrupted by SIGTERM")
    assert not (sweep_dir / "2").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_job_started_again_in_its_folder_resumes_there(tmp_path: Path, signum: int) -> None:
    """What a requeued cluster job does (submitit requeues the same job, into the same folder): the
    same command again resumes from the folder's own last.ckpt and ends as an uninterrupted run,
    its history.csv too (after a SIGKILL as well: the history comes with the checkpoint)."""
    folder, whole = tmp_path / "job", tmp_path / "whole"
    process = src_run_started(*LONG, f"hydra.run.dir={folder}")
    _wait_for(folder / "checkpoints" / "last.ckpt", process)
    time.sleep(0.5)
    process.send_signal(signum)
    assert process.wait(timeout=120) in (128 + signum, -signum)
    again = src_run(*LONG, f"hydra.run.dir={folder}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming the interrupted run in" in again.stdout + again.stderr
    assert not (folder / "error.txt").exists()
    if signum == signal.SIGTERM:
        assert (folder / "error.before-resume.txt").read_text().startswith("Interrupted by SIGTERM")
    assert src_run(*LONG, f"hydra.run.dir={whole}").returncode == 0
    got, expected = (json.loads((path / "metrics.json").read_text()) for path in (folder, whole))
    assert got["steps"] == expected["steps"] and got["val/loss"] == expected["val/loss"]
    for key, value in _weights(whole).items():
        assert torch.equal(_weights(folder)[key], value), key
    assert len(history_rows(whole)) == 300 and history_rows(folder) == history_rows(whole)

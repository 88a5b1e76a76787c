"""Sweeps on a real SLURM (scripts/slurm-up.sh starts a one-node one; .ci/run does), through
`python -m src.run` as a user runs them: per-run and batched sweeps equal to the same sweeps run
locally, preemption (`scontrol requeue`) survived bit-identically, a cancelled chunk reported and
then run again alone, and a detached sweep. Skipped, with the reason, where `sinfo` does not answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import PROJECT_ROOT, slurm_problem, src_run, src_run_started

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The census of 2x2 images, long enough to be interrupted mid-training (last.ckpt every 100 epochs).
CENSUS = [
    "experiment=census_ca_2x2",
    "trainer.max_epochs=1000",
    "callbacks.last_checkpoint.every_n_epochs=100",
]
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
# What differs between equal runs: their timings.
TIMINGS = ("train/time_s", "train/images_per_s")
BATCHED_SLURM = [
    "hydra/launcher=batched",
    "hydra.launcher.max_members=2",
    "hydra.launcher.executor=slurm",
    "+hydra.launcher.submitit.cpus_per_task=1",
    "+hydra.launcher.submitit.mem_gb=2",
]


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    """A SLURM that answers; the tests skip, saying why, where there is none."""
    if problem := slurm_problem():
        pytest.skip(problem)


def _wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _job_id(sweep_dir: Path, folder: str) -> str:
    return json.loads((sweep_dir / "jobs.json").read_text())[folder]["job_id"]


def _running(job_id: str) -> bool:
    state = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True)
    return state.stdout.strip() == "RUNNING"


def _results(sweep_dir: Path) -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    """Each job folder's metrics (without the training time) and final weights."""
    results = {}
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        for key in TIMINGS:
            metrics.pop(key, None)
        weights = torch.load(metrics_file.parent / "checkpoints" / "last.ckpt", weights_only=False)
        results[metrics_file.parent.name] = (metrics, weights["state_dict"])
    return results


def _same_results(got: Path, expected: Path) -> None:
    got_results, expected_results = _results(got), _results(expected)
    assert got_results.keys() == expected_results.keys()
    for folder, (metrics, weights) in expected_results.items():
        assert got_results[folder][0] == metrics, folder
        for key, value in weights.items():
            assert torch.equal(got_results[folder][1][key], value), (folder, key)
    summaries = [json.loads((path / "summary.json").read_text()) for path in (got, expected)]
    for summary in summaries:
        summary.pop("sweep")
        for group in [summary, *summary["groups"].values()]:
            for key in TIMINGS:
                group["metrics"].pop(key, None)
    assert summaries[0] == summaries[1]


def _requeue_when_saved(sweep_dir: Path, folder: str, checkpoint: Path) -> str:
    """`scontrol requeue` of the job of `folder` once it has saved `checkpoint` (mid-training)."""
    _wait(lambda: (sweep_dir / "jobs.json").is_file(), "the submission")
    job_id = _job_id(sweep_dir, folder)
    _wait(checkpoint.is_file, f"{checkpoint}")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    return job_id


def _restarts(job_id: str) -> int:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True)
    return int(shown.stdout.split("Restarts=")[1].split()[0])


def test_a_slurm_array_sweep_survives_a_requeue_and_equals_the_local_sweep(tmp_path: Path) -> None:
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    sweep = ["-m", *CENSUS, "seed=range(0,3)"]
    process = src_run_started(*sweep, *SLURM, f"hydra.sweep.dir={on_slurm}")
    _requeue_when_saved(on_slurm, "0", on_slurm / "0" / "checkpoints" / "last.ckpt")
    assert src_run(*sweep, f"hydra.sweep.dir={local}").returncode == 0
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert output.count("SLURM accounting is off") == 1 and "Bypassing sacct" not in output
    # The requeued job started again in its folder and resumed there.
    assert (on_slurm / "0" / "error.before-resume.txt").read_text().startswith("Interrupted by SIGTERM")
    _same_results(on_slurm, local)


def test_a_batched_sweep_in_slurm_chunks_survives_a_requeue_and_equals_the_local_one(tmp_path: Path) -> None:
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    sweep = ["-m", *CENSUS, "seed=range(0,4)"]
    process = src_run_started(*sweep, *BATCHED_SLURM, f"hydra.sweep.dir={on_slurm}")
    job_id = _requeue_when_saved(on_slurm, "2", on_slurm / "batched" / "2-3" / "last.ckpt")
    local_run = src_run(
        *sweep, "hydra/launcher=batched", "hydra.launcher.max_members=2", f"hydra.sweep.dir={local}"
    )
    assert local_run.returncode == 0, local_run.stderr[-3000:]
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert _restarts(job_id) == 1
    # The chunk stopped at the requeue, its members' folders saying so, and resumed from its last.ckpt.
    for member in ("2", "3"):
        kept = (on_slurm / member / "error.before-resume.txt").read_text()
        assert kept.startswith("Interrupted by SIGTERM") and "batched/2-3/last.ckpt" in kept, kept
    _same_results(on_slurm, local)


def test_a_cancelled_chunk_fails_the_sweep_and_the_same_command_runs_only_it(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *CENSUS, "seed=range(0,4)", *BATCHED_SLURM, f"hydra.sweep.dir={sweep_dir}"]
    process = src_run_started(*command)
    _wait(lambda: (sweep_dir / "jobs.json").is_file(), "the submission")
    job_id = _job_id(sweep_dir, "2")
    _wait(lambda: _running(job_id), f"job {job_id} to run")
    subprocess.run(["scancel", job_id], check=True)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1, output[-3000:]
    assert f"Chunk of jobs #2-#3 (cluster job {job_id}) ended without a result" in output
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 4 and sorted(summary["failed"]) == ["2", "3"]
    again = src_run(*command)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-3000:]
    assert "2 finished (skipped)" in said and "1 chunk(s)" in said
    assert json.loads((sweep_dir / "summary.json").read_text())["n_failed"] == 0


def test_a_detached_sweep_returns_at_once_and_its_summary_job_writes_the_summary(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *CENSUS, "seed=range(0,4)", *BATCHED_SLURM, f"hydra.sweep.dir={sweep_dir}"]
    started = time.monotonic()
    detached = src_run(*command, "hydra.launcher.detach=true")
    assert detached.returncode == 0, detached.stderr[-3000:]
    assert time.monotonic() - started < 30
    said = detached.stdout + detached.stderr
    assert "summary job" in said and f"python -m src.summary {sweep_dir}" in said
    assert not (sweep_dir / "summary.json").exists()
    status = subprocess.run(
        [sys.executable, "-m", "src.summary", str(sweep_dir)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert "4 jobs:" in status.stdout and ("running" in status.stdout), status.stdout + status.stderr
    _wait((sweep_dir / "summary.json").is_file, "the summary job", timeout=240)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 4 and summary["n_failed"] == 0
    again = src_run(*command, "hydra.launcher.detach=true")
    said = again.stdout + again.stderr
    assert again.returncode == 0 and "4 finished (skipped)" in said and "submitted" not in said


def test_a_job_at_its_time_limit_saves_is_requeued_and_completes(tmp_path: Path) -> None:
    """A job whose one-minute limit is too short for its training gets SIGUSR2 before the limit
    (signal_delay_s), is requeued by submitit, saves, and resumes in its folder until it completes,
    to the result of a run that was never stopped."""
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    long_census = ["experiment=census_ca_2x2", "trainer.max_epochs=24000", "seed=0"]
    limited = [
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=40",
        "hydra.launcher.max_num_timeout=20",
    ]
    result = src_run("-m", *long_census, *SLURM, *limited, f"hydra.sweep.dir={on_slurm}", timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # submitit's SIGUSR2 handler requeues the job, whose SIGTERM then stops it with a checkpoint.
    kept = (on_slurm / "0" / "error.before-resume.txt").read_text()
    assert kept.startswith("Interrupted by SIG") and "last.ckpt" in kept, kept
    assert json.loads((on_slurm / "0" / "metrics.json").read_text())["epochs"] == 24000
    assert src_run("-m", *long_census, f"hydra.sweep.dir={local}").returncode == 0
    _same_results(on_slurm, local)

"""Every kill is reported (issue 29, class 7): a sweep stopped by SIGTERM or SIGINT, through each
launcher and in each phase, exits 128 + the signal, leaves error.txt in every job folder it began
and did not finish, and a summary that says it was interrupted, which jobs did not finish and how
to resume; the same command again then finishes the sweep, clearing the error.txt of the jobs it
redid, to the metrics of an uninterrupted sweep. Every sweep is `python -m src.run` in its own
process, as a user runs it, stopped by a real signal."""

from __future__ import annotations

import json
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_cluster import SLURM
from tests.helpers import slurm_problem, src_run, src_run_started

pytestmark = pytest.mark.slow

# Three census jobs one after another, last.ckpt every 50 of their 300 one-step epochs: long enough
# for a signal to land mid-training once a job's first checkpoint is there.
BASIC = [
    "experiment=census_ca_2x2",
    "seed=range(0,3)",
    "trainer.max_epochs=300",
    "callbacks.last_checkpoint.every_n_epochs=50",
]
# Eight census seeds trained together, with figures: each member's folder takes a measurable time
# to write, so a signal can land while the chunk writes them.
BATCHED = [
    "experiment=census_ca_2x2",
    "seed=range(0,8)",
    "trainer.max_epochs=500",
    "callbacks.last_checkpoint.every_n_epochs=50",
    "hydra/launcher=batched",
    "figures=true",
]
# What differs between equal runs: their timings.
TIMINGS = ("train/time_s", "train/images_per_s")
STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}


def _pause(hook: str, marker: Path, job: int | None = None) -> list[str]:
    """Overrides that hold the sweep at `hook` (of job `job`) until the test's signal, once."""
    pause = "+hydra.callbacks.pause"
    held = [f"{pause}._target_=tests.helpers.PauseOnce", f"{pause}.hook={hook}", f"{pause}.marker={marker}"]
    return held + ([f"{pause}.job={job}"] if job is not None else [])


def _sweep(tmp_path: Path, overrides: list[str]) -> list[str]:
    """The command line of a sweep into tmp_path/sweep (its folder given last, as a resume gives it)."""
    return ["-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"]


def _kill_when(
    arguments: list[str], ready: Callable[[], bool], signum: int, timeout: float = 180
) -> tuple[int, str]:
    """Start the sweep, send `signum` as soon as `ready()`, and return its exit status and output."""
    process = src_run_started(*arguments)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the sweep did not reach the point to stop it at"
        time.sleep(0.02)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def _results(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Each job folder's metrics.json, timings aside."""
    return {
        path.parent.name: {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMINGS}
        for path in sweep_dir.glob("*/metrics.json")
    }


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, dict[str, Any]]]:
    """The results of the uninterrupted sweeps, by launcher ("basic", "batched"), each run once."""
    results: dict[str, dict[str, dict[str, Any]]] = {}

    def of(launcher: str) -> dict[str, dict[str, Any]]:
        if launcher not in results:
            tmp_path = tmp_path_factory.mktemp(launcher)
            done = src_run(*_sweep(tmp_path, BASIC if launcher == "basic" else BATCHED))
            assert done.returncode == 0, done.stderr[-3000:]
            results[launcher] = _results(tmp_path / "sweep")
        return results[launcher]

    return of


def _reported(
    arguments: list[str], status: int, output: str, stopped: list[str], not_started: int
) -> dict[str, Any]:
    """Check the exit status, the closing line and the summary of a sweep stopped by a signal; the
    summary."""
    sweep_dir = Path(arguments[-1].split("=", 1)[1])
    name = signal.Signals(status - 128).name
    assert status in STATUS.values(), output[-3000:]
    last = output.strip().splitlines()[-1]
    resume = "python -m src.run " + shlex.join(arguments)
    assert f"Sweep {sweep_dir} interrupted by {name}: " in last, output[-3000:]
    assert f"{len(stopped)} stopped unfinished, {not_started} not started" in last, last
    assert last.endswith(f"resume with the same command: {resume}"), last
    assert "Traceback" not in output, output[-3000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["interrupted"] == {
        "by": name,
        "status": status,
        "jobs": stopped,
        "not_started": not_started,
        "resume": resume,
    }
    assert summary["n_failed"] == len(stopped) and sorted(summary["failed"]) == sorted(stopped)
    text = (sweep_dir / "summary.md").read_text()
    assert f"**Interrupted by {name}** (exit status {status})" in text and f"`{resume}`" in text
    for job in stopped:
        error = (sweep_dir / job / "error.txt").read_text()
        assert error.startswith(f"Interrupted by {name}") and f"(exit status {status})" in error, error
        assert f"hydra.sweep.dir={sweep_dir} (the sweep started again" in error and "ckpt_path" not in error
    return summary


def _resumed(arguments: list[str], expected: dict[str, dict[str, Any]], said: str | None = None) -> Path:
    """Run the same command again: it finishes the sweep, no job folder keeps an error.txt, the
    summary counts no failure and says no interruption, and every job's metrics equal the
    uninterrupted sweep's; the sweep folder."""
    sweep_dir = Path(arguments[-1].split("=", 1)[1])
    again = src_run(*arguments)
    assert again.returncode == 0, again.stderr[-3000:]
    if said is not None:
        assert said in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
    assert not list(sweep_dir.glob("*/error.txt"))
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_failed"] == 0 and "interrupted" not in summary
    assert summary["n_jobs"] == len(expected)
    assert "Interrupted" not in (sweep_dir / "summary.md").read_text()
    got = _results(sweep_dir)
    assert sorted(got) == sorted(expected)
    for job, metrics in expected.items():
        numbers = {key for key, value in metrics.items() if isinstance(value, int | float)}
        assert {k: v for k, v in got[job].items() if k not in numbers} == {
            k: v for k, v in metrics.items() if k not in numbers
        }, job
        # Equal up to float32 rounding: a batched chunk resumed while writing its folders finishes a
        # subset of its members together, in batches of another shape.
        assert {k: got[job].get(k) for k in numbers} == pytest.approx(
            {k: metrics[k] for k in numbers}, rel=1e-6, abs=1e-6
        ), job
    return sweep_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_sweep_stopped_in_a_job_says_so_and_resumes(tmp_path: Path, whole: Callable, signum: int) -> None:
    """Hydra's basic launcher, the signal mid-training of the second of three jobs."""
    arguments = _sweep(tmp_path, BASIC)
    sweep_dir = tmp_path / "sweep"
    status, output = _kill_when(arguments, (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file, signum)
    assert status == STATUS[signum], output[-3000:]
    _reported(arguments, status, output, ["1"], 1)
    assert (sweep_dir / "0" / "metrics.json").is_file() and not (sweep_dir / "0" / "error.txt").exists()
    error = (sweep_dir / "1" / "error.txt").read_text()
    assert " at epoch " in error and f"is in {sweep_dir / '1' / 'checkpoints' / 'last.ckpt'}" in error
    assert not (sweep_dir / "2").exists()
    if signum != signal.SIGTERM:
        return  # the resume is the same after either signal
    _resumed(
        arguments,
        whole("basic"),
        "1 finished (skipped), 1 interrupted (resumed from last.ckpt), 0 failed (trained afresh), 1 new",
    )
    assert (sweep_dir / "1" / "error.before-resume.txt").read_text().startswith("Interrupted by SIGTERM")


def test_a_sweep_stopped_between_two_jobs_says_so_and_resumes(tmp_path: Path, whole: Callable) -> None:
    """The basic launcher, the signal after the first job ended and before the next began."""
    marker = tmp_path / "paused"
    arguments = _sweep(tmp_path, [*BASIC, *_pause("on_job_end", marker, job=0)])
    status, output = _kill_when(arguments, marker.exists, signal.SIGTERM)
    assert status == 143, output[-3000:]
    _reported(arguments, status, output, [], 2)
    sweep_dir = tmp_path / "sweep"
    assert [p.parent.name for p in sweep_dir.glob("*/.hydra")] == ["0"]
    assert (sweep_dir / "0" / "metrics.json").is_file() and not (sweep_dir / "0" / "error.txt").exists()
    _resumed(arguments, whole("basic"), "1 finished (skipped), 0 interrupted (resumed from last.ckpt)")


def test_a_sweep_stopped_as_a_job_begins_says_so_and_resumes(tmp_path: Path, whole: Callable) -> None:
    """The basic launcher, SIGINT once Hydra has made the second job's folder (and its log there),
    before the job has decided anything or recorded itself (.hydra/): no job folder yet, so the
    summary counts the job as not started, and the resume trains it."""
    marker = tmp_path / "paused"
    arguments = _sweep(tmp_path, [*BASIC, *_pause("on_job_start", marker, job=1)])
    status, output = _kill_when(arguments, marker.exists, signal.SIGINT)
    assert status == 130, output[-3000:]
    _reported(arguments, status, output, [], 2)
    sweep_dir = tmp_path / "sweep"
    assert [p.name for p in (sweep_dir / "1").iterdir()] == ["run.log"]
    _resumed(arguments, whole("basic"), "1 finished (skipped), 0 interrupted (resumed from last.ckpt)")


def test_a_sweep_stopped_while_it_summarises_says_so_and_resumes(tmp_path: Path, whole: Callable) -> None:
    """The basic launcher, the signal after every job ended, before the summary was written: the
    summary is written as the process exits, saying so; the resume trains nothing."""
    marker = tmp_path / "paused"
    arguments = _sweep(tmp_path, [*BASIC, *_pause("on_multirun_end", marker)])
    status, output = _kill_when(arguments, marker.exists, signal.SIGTERM)
    assert status == 143, output[-3000:]
    summary = _reported(arguments, status, output, [], 0)
    assert summary["n_jobs"] == 3
    sweep_dir = tmp_path / "sweep"
    finished_at = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    _resumed(arguments, whole("basic"), "3 finished (skipped), 0 interrupted")
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")} == finished_at


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_batched_sweep_stopped_while_training_says_so_and_resumes(
    tmp_path: Path, whole: Callable, signum: int
) -> None:
    """The batched launcher, its chunk trained in this process, the signal mid-training: each
    member gets a job folder whose error.txt names the chunk's last.ckpt."""
    arguments = _sweep(tmp_path, BATCHED)
    sweep_dir = tmp_path / "sweep"
    checkpoint = sweep_dir / "batched" / "0-7" / "last.ckpt"
    status, output = _kill_when(arguments, checkpoint.is_file, signum)
    assert status == STATUS[signum], output[-3000:]
    members = [str(seed) for seed in range(8)]
    _reported(arguments, status, output, members, 0)
    for member in members:
        error = (sweep_dir / member / "error.txt").read_text()
        assert " at epoch " in error and f"is in {checkpoint}: resume" in error, error
        assert not (sweep_dir / member / "metrics.json").exists()
    if signum != signal.SIGTERM:
        return  # the resume is the same after either signal
    _resumed(arguments, whole("batched"), "0 finished (skipped), 8 interrupted (resumed from last.ckpt)")
    for member in members:
        kept = (sweep_dir / member / "error.before-resume.txt").read_text()
        assert kept.startswith("Interrupted by SIGTERM"), member


def test_a_batched_sweep_stopped_while_writing_job_folders_says_so_and_resumes(
    tmp_path: Path, whole: Callable
) -> None:
    """The batched launcher, the signal after training, while the chunk writes its members' folders
    (the second one): the first is finished, the one being written and those after it say they
    were interrupted."""
    arguments = _sweep(tmp_path, BATCHED)
    sweep_dir = tmp_path / "sweep"
    status, output = _kill_when(arguments, (sweep_dir / "1" / "config.yaml").is_file, signal.SIGTERM)
    assert status == 143, output[-3000:]
    stopped = [str(seed) for seed in range(1, 8)]
    _reported(arguments, status, output, stopped, 0)
    assert (sweep_dir / "0" / "metrics.json").is_file() and not (sweep_dir / "0" / "error.txt").exists()
    for member in stopped:
        error = (sweep_dir / member / "error.txt").read_text()
        assert f"is in {sweep_dir / 'batched' / '0-7' / 'last.ckpt'}: resume" in error, error
    assert not any((sweep_dir / member / "metrics.json").exists() for member in stopped[1:])
    _resumed(arguments, whole("batched"), "1 finished (skipped)")


@pytest.mark.cluster
def test_a_slurm_sweep_whose_launching_process_is_stopped_says_so_and_resumes(
    tmp_path: Path, whole: Callable
) -> None:
    """The slurm launcher: its jobs run on the cluster, so SIGTERM to the process that submitted
    them and waits stops none of them; that process exits 143 with a summary saying it was
    interrupted, and the same command, once the jobs have ended, finishes the sweep without
    training any job again. Skipped, saying why, where no SLURM answers."""
    if problem := slurm_problem():
        pytest.skip(problem)
    arguments = _sweep(tmp_path, [*BASIC, *SLURM])
    sweep_dir = tmp_path / "sweep"
    started = (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file
    status, output = _kill_when(arguments, started, signal.SIGTERM, timeout=300)
    assert status == 143, output[-3000:]
    assert f"Sweep {sweep_dir} interrupted by SIGTERM: " in output.strip().splitlines()[-1], output[-3000:]
    interrupted = json.loads((sweep_dir / "summary.json").read_text())["interrupted"]
    assert interrupted["by"] == "SIGTERM" and interrupted["jobs"] == []  # none stopped: they run on
    deadline = time.monotonic() + 300
    while len(list(sweep_dir.glob("*/metrics.json"))) < 3 or list(sweep_dir.glob("*/.lock")):
        assert time.monotonic() < deadline, "the sweep's jobs did not end on the cluster"
        time.sleep(0.5)
    _resumed(arguments, whole("basic"), "3 finished (skipped)")

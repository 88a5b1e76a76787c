"""Sweeps on a cluster through submitit (hydra/launcher=slurm, and hydra/launcher=batched with
executor=slurm or local): the jobs' states without SLURM accounting, waiting for jobs that may
fail or be cancelled, the record of what was submitted (<sweep>/jobs.json), and a detached sweep's
summary job (docs/cluster.md)."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

# The record of a sweep's jobs: job folder -> overrides and cluster job id.
SUBMITTED = "jobs.json"
# States in which a SLURM job is still to run or running (squeue's names).
QUEUED = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}


@functools.cache
def accounting_off() -> bool:
    """Whether this cluster has no SLURM accounting (sacct fails); said once, in one line."""
    answer = subprocess.run(["sacct", "--noheader", "-j", "1"], capture_output=True, text=True)
    if answer.returncode == 0:
        return False
    log.info(
        "SLURM accounting is off (sacct: %s): job states come from squeue",
        answer.stderr.strip() or f"exit status {answer.returncode}",
    )
    return True


class QueueWatcher(SlurmInfoWatcher):
    """submitit's watcher of SLURM job states, asking squeue where sacct cannot answer (squeue
    knows a job for MinJobAge after it ended, 300 s by default): without it every poll logs a
    warning and a cancelled job is waited for forever."""

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or not accounting_off():
            return command
        ids = ",".join(command[command.index("-j") + 1 :: 2])
        return ["squeue", "--states=all", "--array", "--noheader", "-o", "%i|%T|%N", "-j", ids]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        if accounting_off():  # squeue's lines, without sacct's header
            text = "JobID|State|NodeList\n" + text
        return super().read_info(text)


def watch_queue() -> None:
    """Job states from squeue where accounting is off (`QueueWatcher`), in this process."""
    if not isinstance(SlurmJob.watcher, QueueWatcher):
        SlurmJob.watcher = QueueWatcher(delay_s=SlurmJob.watcher._delay_s)


def wait_for(jobs: Sequence[Any], labels: Sequence[str]) -> list[Any]:
    """Each submitit job's result, or None for a job that failed or ended without one (cancelled,
    killed, out of time), which is logged with its label and state."""
    from submitit.core.utils import UncompletedJobError

    results = []
    for job, label in zip(jobs, labels, strict=True):
        try:
            results.append(job.results()[0])
        except UncompletedJobError as error:
            log.error("%s (cluster job %s) ended without a result: %s", label, job.job_id, str(error).strip())
            results.append(None)
    return results


def submitted(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """<sweep>/jobs.json: each submitted job's folder (relative), overrides and cluster job id."""
    path = sweep_dir / SUBMITTED
    return json.loads(path.read_text()) if path.is_file() else {}


def record_submission(sweep_dir: Path, jobs: dict[str, tuple[Sequence[str], str]]) -> None:
    """Add to <sweep>/jobs.json each job folder's overrides and cluster job id (`submitted`)."""
    record = submitted(sweep_dir)
    record.update({folder: {"overrides": list(o), "job_id": job_id} for folder, (o, job_id) in jobs.items()})
    (sweep_dir / SUBMITTED).write_text(json.dumps(record, indent=1, sort_keys=True))


def detach(
    executor: Any, sweep_dir: Path, job_ids: Sequence[str], jobs: int, summarise: Callable[[Path], Any]
) -> None:
    """Submit the summary job, `summarise(sweep_dir)` after all of `job_ids` (afterany), then say
    what was submitted (the sweep's `jobs` in them) and how to follow it; the launching process
    returns without waiting."""
    from src.pipeline.run import sweep_command

    sweep_dir = sweep_dir.resolve()
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    executor.update_parameters(
        slurm_dependency="afterany:" + ":".join(arrays),
        name="summary",
        gpus_per_node=0,
        cpus_per_task=1,
        mem_gb=4,
        timeout_min=60,
    )
    summary_job = executor.submit(summarise, sweep_dir)
    log.info(
        "Detached: the sweep's %d job(s) in SLURM job(s) %s; summary job %s runs after them.\n"
        "  Sweep folder: %s\n  Follow it:    python -m src.summary %s   (or squeue -j %s)\n"
        "  Resume it:    %s",
        jobs,
        ",".join(arrays),
        summary_job.job_id,
        sweep_dir,
        sweep_dir,
        ",".join([*arrays, summary_job.job_id]),
        sweep_command(sweep_dir),
    )


def queue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """squeue's state of each of `job_ids` it still knows; None where squeue does not answer."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    command = ["squeue", "--states=all", "--array", "--noheader", "-o", "%i|%T", "-j", ",".join(arrays)]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("squeue did not answer (%s): jobs without a result are counted as running", error)
        return None
    return dict(line.split("|", 1) for line in output.split() if "|" in line)


def progress(sweep_dir: Path) -> dict[str, int] | None:
    """How many of a sweep's submitted jobs (jobs.json) are done, running (or queued), failed and
    missing (no result and not in the queue); None for a sweep that recorded no submission."""
    from src.pipeline.run import read_run

    record = submitted(sweep_dir)
    if not record:
        return None
    states = queue_states([entry["job_id"] for entry in record.values()])
    counts = dict.fromkeys(("done", "running", "failed", "missing"), 0)
    for folder, entry in record.items():
        run = read_run(sweep_dir / folder) if (sweep_dir / folder).is_dir() else None
        if run is not None and run.finished:
            counts["done"] += 1
        elif states is None or states.get(entry["job_id"]) in QUEUED:
            counts["running"] += 1
        elif run is not None and (sweep_dir / folder / "error.txt").is_file():
            counts["failed"] += 1
        else:
            counts["missing"] += 1
    return counts

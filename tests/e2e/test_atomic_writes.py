"""A checkpoint is replaced atomically or not at all (issue 29, class 5), on a second file system
(a tmpfs mounted for the test, as a cluster's scratch is another file system than /tmp): SIGKILL
while a checkpoint is being written, many times, leaves a last.ckpt that loads and a run that
resumes; a damaged last.ckpt and a full disk are one line each, with no partial file left."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from src.files import PARTIAL, write_text_atomic
from src.pipeline.checkpoints import load_checkpoint, save_checkpoint_file
from tests.helpers import FAST, entry_point, one_line_failure, src_run_started

pytestmark = pytest.mark.slow

# A run whose checkpoints (about 25 MB, one every epoch) take longer to write than its epochs take to train.
RUN = [
    "data=lines2x2",
    *FAST,
    "trainer.max_epochs=40",
    "model.net.hidden_dims=[1024,1024]",
    "callbacks.last_checkpoint.every_n_epochs=1",
]


@contextlib.contextmanager
def _mounted(size: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tmpfs-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                       capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs as a second file system here ({error}); needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A second file system of 200 MB."""
    with _mounted("200m") as folder:
        yield folder


def _partials(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if PARTIAL in name] if folder.is_dir() else []


def _kill_while_writing(folder: Path, pid: int, after: Path, timeout: float = 60) -> bool:
    """SIGKILL `pid` as soon as a checkpoint is being written into `folder` (its temporary file
    is there) once `after` exists; whether it was caught writing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if after.is_file() and _partials(folder):
            os.kill(pid, signal.SIGKILL)
            return True
        time.sleep(0)
    os.kill(pid, signal.SIGKILL)
    return False


def test_a_checkpoint_killed_while_written_leaves_the_last_good_one(scratch: Path) -> None:
    """Twenty SIGKILLs of a process rewriting last.ckpt, each while the file is being written."""
    folder = scratch / "checkpoints"
    last = folder / "last.ckpt"
    weights = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))  # 16 MB
    save_checkpoint_file({"state_dict": {"model.w": weights}, "global_step": 0}, last)
    caught, steps = 0, []
    for _ in range(20):
        pid = os.fork()
        if pid == 0:  # the writer: rewrites last.ckpt until killed
            try:
                for step in itertools.count(1):
                    save_checkpoint_file({"state_dict": {"model.w": weights}, "global_step": step}, last)
            finally:
                os._exit(0)
        caught += _kill_while_writing(folder, pid, last)
        os.waitpid(pid, 0)
        checkpoint = load_checkpoint(last)  # whole: the old state or the new, never a part
        assert torch.equal(checkpoint["state_dict"]["model.w"], weights)
        steps.append(checkpoint["global_step"])
        assert last.stat().st_size > 16_000_000
    assert caught == 20
    assert len(_partials(folder)) > 0  # the kills hit the writes: their temporary files are left


def test_a_run_killed_during_checkpoint_saves_resumes(scratch: Path) -> None:
    """`python -m src.run` on the second file system, SIGKILLed while saving a checkpoint, twice;
    last.ckpt loads after each kill, and the same command resumes and finishes the run."""
    run = scratch / "run"
    command = [*RUN, f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"
    seen_steps = []
    for _ in range(2):
        process = src_run_started(*command)
        caught = _kill_while_writing(run / "checkpoints", process.pid, last)
        process.wait(timeout=60)
        assert caught and process.returncode == -signal.SIGKILL, process.stdout.read()[-3000:]
        seen_steps.append(load_checkpoint(last)["global_step"])
        assert not (run / "metrics.json").exists()
    assert seen_steps[1] >= seen_steps[0]
    process = src_run_started(*command)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "Resuming the interrupted run" in output
    assert load_checkpoint(last)["epoch"] == 39 and (run / "metrics.json").is_file()
    assert not _partials(run / "checkpoints")


def _interrupted_run(root: Path, capsys: pytest.CaptureFixture) -> Path:
    """A run folder whose run ended before writing metrics.json (as a killed run's)."""
    run = root / "run"
    status, stderr = entry_point("src.run", ["data=lines2x2", *FAST, f"hydra.run.dir={run}"], capsys)
    assert status == 0, stderr[-3000:]
    (run / "metrics.json").unlink()
    return run


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_last_checkpoint_is_named_before_resuming(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    run = _interrupted_run(tmp_path, capsys)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:1000])
    status, stderr = entry_point("src.run", ["data=lines2x2", *FAST, f"hydra.run.dir={run}"], capsys)
    line = one_line_failure(status, stderr, "cannot resume:")
    assert str(last) in line and "move" in line and "ckpt_path=" in line
    assert not (run / "metrics.json").exists()


def test_a_damaged_checkpoint_given_to_resume_from_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    status, stderr = entry_point(
        "src.run",
        ["data=lines2x2", *FAST, f"ckpt_path={damaged}", f"hydra.run.dir={tmp_path / 'run'}"],
        capsys,
    )
    one_line_failure(status, stderr, f"cannot resume: {damaged}")


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(capsys: pytest.CaptureFixture) -> None:
    with _mounted("9m") as small:
        run = small / "run"
        status, stderr = entry_point("src.run", [*RUN, f"hydra.run.dir={run}"], capsys)
        line = one_line_failure(status, stderr, "no space left on the disk of")
        assert ".ckpt" in line and "MiB needed" in line
        checkpoints = run / "checkpoints"
        assert not _partials(checkpoints) and not _partials(run)
        for checkpoint in checkpoints.glob("*.ckpt"):
            load_checkpoint(checkpoint)  # what was written is whole
        error = run / "error.txt"
        assert not error.exists() or error.stat().st_size > 0


def test_a_write_that_fails_keeps_the_old_file_and_replaces_a_link(tmp_path: Path) -> None:
    victim, name = tmp_path / "victim.md", tmp_path / "summary.md"
    victim.write_text("kept\n")
    name.symlink_to(victim)
    write_text_atomic(name, "new\n")
    assert victim.read_text() == "kept\n" and not name.is_symlink() and name.read_text() == "new\n"
    with _mounted("1m") as small:
        (small / "summary.md").write_text("old\n")
        with pytest.raises(OSError, match=r"no space left on the disk of .* to write summary.md \(2.0 MiB"):
            write_text_atomic(small / "summary.md", "x" * 2**21)
        assert (small / "summary.md").read_text() == "old\n" and not _partials(small)

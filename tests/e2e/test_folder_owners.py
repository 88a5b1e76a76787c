"""A finished run is never touched by a later command, and a sweep folder belongs to one sweep
(docs/reliability.md, classes 6 and 8): through `python -m src.run` as a user starts it, with the
exit status, the one line, and every file of the earlier run checked byte for byte and by its
modification time. The refusals run in this process (`entry_point`), the runs that train in
their own."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import (
    entry_point,
    entry_point_output,
    fingerprint,
    one_line_failure,
    src_run,
    src_run_started,
)

RUN = ["experiment=census_ca_2x2", "trainer.max_epochs=30", "print_config=false", "logger=none"]
SWEEP = ["-m", "experiment=census_ca_2x2", "trainer.max_epochs=30", "logger=none"]
LAUNCHERS = ["hydra/launcher=basic", "hydra/launcher=batched"]


def _state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root`: its content's hash and its modification time."""
    return {name: (digest, (root / name).stat().st_mtime_ns) for name, digest in fingerprint(root).items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished single run of seed 1, started as a user starts it."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    done = src_run(*RUN, "seed=1", f"hydra.run.dir={folder}")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_a_finished_run_started_again_with_its_config_is_skipped_untouched(
    finished: Path, capsys: pytest.CaptureFixture
) -> None:
    before = _state(finished)
    status, out, err = entry_point_output("src.run", [*RUN, "seed=1", f"hydra.run.dir={finished}"], capsys)
    assert status == 0, err[-3000:]
    assert f"{finished} had finished with this config: nothing to do" in out
    metrics = json.loads((finished / "metrics.json").read_text())
    assert f"test/loss {metrics['test/loss']:.4g}" in out  # its closing line, from its metrics
    assert "Trainer.fit" not in out + err  # nothing trained
    assert _state(finished) == before


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["seed=2"], "seed"),
        (["seed=1", "model.optimizer.lr=0.01"], "model.optimizer.lr"),
        (["seed=1", "trainer.max_epochs=0"], "trainer.max_epochs"),  # a bad value: refused all the same
        (["seed=1", "model.net.hidden_dims=[4]"], "model.net.hidden_dims"),
    ],
)
def test_a_run_of_another_config_into_a_finished_run_is_refused_untouched(
    finished: Path, overrides: list[str], named: str, capsys: pytest.CaptureFixture
) -> None:
    before = _state(finished)
    status, err = entry_point("src.run", [*RUN, *overrides, f"hydra.run.dir={finished}"], capsys)
    line = one_line_failure(status, err, "holds a run of another config")
    assert f"differs in {named}" in line and "overwrite=true" in line and str(finished) in line
    assert _state(finished) == before


@pytest.mark.parametrize("value", ["flase", "n0", "2"])
def test_a_bad_overwrite_value_is_refused_untouched(
    finished: Path, value: str, capsys: pytest.CaptureFixture
) -> None:
    before = _state(finished)
    status, err = entry_point(
        "src.run", [*RUN, "seed=2", f"overwrite={value}", f"hydra.run.dir={finished}"], capsys
    )
    one_line_failure(status, err, f"overwrite={value}")
    assert _state(finished) == before


def test_overwrite_true_replaces_a_finished_run_with_a_fresh_one(tmp_path: Path) -> None:
    folder, fresh = tmp_path / "run", tmp_path / "fresh"
    for command in ([*RUN, "seed=1", "model.net.hidden_dims=[4]"], [*RUN, "seed=2", "overwrite=true"]):
        done = src_run(*command, f"hydra.run.dir={folder}")
        assert done.returncode == 0, done.stderr[-3000:]
    assert src_run(*RUN, "seed=2", f"hydra.run.dir={fresh}").returncode == 0
    got, expected = (json.loads((path / "metrics.json").read_text()) for path in (folder, fresh))
    assert (
        got["seed"] == 2 and got["test/loss"] == expected["test/loss"] and got["steps"] == expected["steps"]
    )
    # Nothing of the replaced run is left: the same files as a fresh run's, its config the new one.
    assert set(fingerprint(folder)) == set(fingerprint(fresh))
    assert "hidden_dims:\n    - 4" not in (folder / "config.yaml").read_text()
    assert "seed=2" in (folder / ".hydra" / "overrides.yaml").read_text()


def test_an_interrupted_run_started_again_with_a_changed_setting_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    long = [*RUN, "seed=3", "trainer.max_epochs=1500", "callbacks.last_checkpoint.every_n_epochs=25"]
    process = src_run_started(*long, f"hydra.run.dir={folder}")
    deadline = time.monotonic() + 120
    while not (folder / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    before = _state(folder)
    refused = src_run(*long, "model.optimizer.lr=0.01", f"hydra.run.dir={folder}")
    line = one_line_failure(refused.returncode, refused.stderr, "holds a run of another config")
    assert "differs in model.optimizer.lr" in line
    assert _state(folder) == before
    resumed = src_run(*long, f"hydra.run.dir={folder}")  # the same command resumes it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming the interrupted run in" in resumed.stdout + resumed.stderr
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 1500


@pytest.fixture(scope="module", params=LAUNCHERS)
def sweep_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A finished sweep of seeds 0 and 1, in a folder given by hydra.sweep.dir, and its launcher."""
    folder = tmp_path_factory.mktemp("sweep") / request.param.split("=")[1]
    done = src_run(*SWEEP, "seed=0,1", request.param, f"hydra.sweep.dir={folder}")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, request.param


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=100,101"], "ran with other settings (seed)"),
        (["seed=0,1", "trainer.max_epochs=31"], "ran with other settings (trainer.max_epochs)"),
        (["seed=0,1", "model=vae"], "ran with other settings"),
        (["seed=0"], "holds 1 job folder(s) this sweep does not name (1)"),
        (["seed=0,1", "overwrite=maybe"], "overwrite=maybe"),
    ],
)
def test_a_sweep_into_another_sweeps_folder_is_refused_untouched(
    sweep_folder: tuple[Path, str], overrides: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    folder, launcher = sweep_folder
    before = _state(folder)
    status, out, err = entry_point_output(
        "src.run", [*SWEEP, *overrides, launcher, f"hydra.sweep.dir={folder}"], capsys
    )
    line = one_line_failure(status, err, message)
    assert str(folder) in line or "overwrite" in line
    assert "Sweep stopped before its end" not in out + err
    assert _state(folder) == before  # multirun.yaml and the summary too


def test_a_sweep_started_again_with_more_seeds_trains_only_the_new_ones(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    first = src_run(*SWEEP, "seed=0,1", "hydra/launcher=batched", f"hydra.sweep.dir={folder}")
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {job: _state(folder / job) for job in ("0", "1")}
    more = src_run(*SWEEP, "seed=range(0,4)", "hydra/launcher=batched", f"hydra.sweep.dir={folder}")
    said = more.stdout + more.stderr
    assert more.returncode == 0, said[-3000:]
    assert "started again: 2 finished (skipped), 0 interrupted (resumed from last.ckpt), 0 failed" in said
    assert "training 2 seeds" in said
    assert {job: _state(folder / job) for job in ("0", "1")} == kept
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_jobs"] == 4 and summary["n_failed"] == 0
    assert [json.loads((folder / job / "metrics.json").read_text())["seed"] for job in "0123"] == [0, 1, 2, 3]

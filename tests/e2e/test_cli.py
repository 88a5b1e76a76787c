"""`python -m src.run` as a user runs it: the run folder, parallel jobs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FAST, SMALL_DATA, TEST_KEYS, VAE_KEYS, src_run, src_run_started

pytestmark = pytest.mark.slow


def test_src_run_writes_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "my-run"
    process = src_run_started(
        "model=vae", "logger=csv", *FAST[:-1], *SMALL_DATA["lines"], f"hydra.run.dir={run_dir}"
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics.keys() >= TEST_KEYS | VAE_KEYS
    assert (run_dir / "reconstructions.png").stat().st_size > 1000
    assert "model:" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "csv" / "metrics.csv").is_file()  # the default logger; W&B: test_wandb.py


def test_jobs_started_together_get_their_own_folders(tmp_path: Path) -> None:
    overrides = [
        "data=lines2x2",
        "trainer.max_epochs=1",
        "test=false",
        "logger=none",
        f"paths.output_root={tmp_path}",
    ]
    processes = [src_run_started(*overrides) for _ in range(2)]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    assert all((folder / "metrics.json").is_file() for folder in folders)


def test_bad_override_fails_with_the_key_named(tmp_path: Path) -> None:
    process = src_run("model.reconstruction=l1", "logger=none", f"paths.output_root={tmp_path}")
    assert process.returncode == 2
    (error_file,) = (tmp_path / "runs").glob("*/error.txt")
    assert process.stderr.strip().splitlines()[-1] == (
        "error: model.reconstruction must be one of ['mse', 'bce', 'discretized_logistic'], got 'l1' "
        f"(traceback in {error_file})"
    )
    assert "Traceback" not in process.stderr and "Traceback" in error_file.read_text()


def test_missing_data_is_one_line_and_status_2(tmp_path: Path) -> None:
    process = src_run(
        "data=mnist", f"data.root={tmp_path / 'nowhere'}", "data.download=false", "logger=none",
        f"paths.output_root={tmp_path}",
    )  # fmt: skip
    assert process.returncode == 2 and "Traceback" not in process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MNIST not found in ") and "DATA_ROOT=/path" in last


def test_a_name_cannot_place_the_run_outside_the_output_root(tmp_path: Path) -> None:
    root = tmp_path / "out" / "deeper"
    process = src_run(
        "data=lines2x2", "trainer.max_epochs=1", "logger=none", "figures=false", "test=false",
        "name=../../../escaped", f"paths.output_root={root}",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-2000:]
    (run,) = (root / "runs").iterdir()
    assert "escaped" in run.name and (run / "metrics.json").is_file()
    assert sorted(path.name for path in tmp_path.rglob("*escaped*")) == [run.name]

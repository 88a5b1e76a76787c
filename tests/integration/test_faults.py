"""Faults that must not lose results or pass for success: a run that failed after writing its
metrics, a corrupt metrics.json, a figure that cannot be drawn, a folder that is not a sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from src.analysis.sweep import summarise_sweep
from src.errors import ConfigValueError, MissingFileError, UserError
from src.pipeline.config import path_safe
from src.pipeline.run import Run, read_run
from src.pipeline.training import train
from src.reporting import figures
from tests.helpers import FAST


def _job(folder: Path, metrics: str | None, error: str | None = None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={folder.name}"]))
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics)
    if error is not None:
        (folder / "error.txt").write_text(error)
    return folder


def test_a_job_that_failed_after_its_metrics_counts_as_failed(tmp_path: Path) -> None:
    good = json.dumps({"seed": 0, "test/loss": 1.0})
    _job(tmp_path / "0", good)
    _job(tmp_path / "1", good, "Traceback ...\nRuntimeError: the W&B upload failed\n")
    _job(tmp_path / "2", "{not json")
    _job(tmp_path / "3", None)
    assert read_run(tmp_path / "0").finished and not read_run(tmp_path / "1").finished
    summary = summarise_sweep(tmp_path)
    assert (summary["n_jobs"], summary["n_failed"]) == (4, 3)
    assert summary["failed"]["1"] == "RuntimeError: the W&B upload failed"
    assert summary["failed"]["2"].startswith(f"{tmp_path / '2' / 'metrics.json'} is corrupt (")
    assert summary["failed"]["3"] == "no metrics.json and no error.txt (killed?)"
    assert summary["metrics"]["test/loss"]["n"] == 1


def test_a_folder_that_is_not_a_sweep_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"holds no job folders .*give a sweep folder"):
        summarise_sweep(tmp_path)


def test_a_figure_that_cannot_be_drawn_does_not_fail_the_run(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def degenerate(*args: object, **kwargs: object) -> Path:
        raise ValueError("autodetected range of [0.5, 0.5] is not finite")

    monkeypatch.setattr(figures, "bottleneck_distribution", degenerate)
    run = tmp_path / "run"
    metrics = train(Run(make_config("data=lines2x2", *FAST, "trainer.max_epochs=2"), run))
    assert "test/outcome" in metrics and (run / "metrics.json").is_file()
    assert "autodetected range" in (run / figures.FIGURE_ERRORS).read_text()
    assert (run / "reconstructions.png").is_file() and not (run / "bottleneck.png").exists()


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("ca_lines", "ca_lines"),
        ("../../x", "____x"),
        ("/etc/passwd", "_etc_passwd"),
        ("..", "_"),
        ("a b", "a_b"),
    ],
)
def test_names_become_one_path_component(name: str, safe: str) -> None:
    assert path_safe(name) == safe and "/" not in path_safe(name) and ".." not in path_safe(name)


def test_user_errors_are_one_family() -> None:
    assert issubclass(ConfigValueError, UserError) and issubclass(ConfigValueError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError)

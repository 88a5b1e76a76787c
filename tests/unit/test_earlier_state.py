"""What a job started again finds in its folder (src.pipeline.run.earlier_state)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hydra_plugins.batched_launcher.batched_launcher import foreign_jobs
from src.pipeline.run import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    INTERRUPTED_BY,
    NEW,
    OTHER,
    changed_keys,
    config_changes,
    earlier_state,
)


def _folder(tmp_path: Path, *files: str, error: str | None = None) -> Path:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{"val/loss": 0.5}' if name == "metrics.json" else "x")
    if error is not None:
        (tmp_path / "error.txt").write_text(error)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "error", "same", "state"),
    [
        ((), None, True, NEW),
        # Stopped before it began (a batched member while its chunk trained), or failed before.
        ((".hydra/config.yaml",), f"{INTERRUPTED_BY} SIGTERM at epoch 3", True, INTERRUPTED),
        ((".hydra/config.yaml",), f"{INTERRUPTED_BY} SIGTERM at epoch 3", False, OTHER),
        ((), "Traceback ...\nRuntimeError: the shared finishing failed", True, FAILED),
        (("config.yaml", "metrics.json"), None, True, FINISHED),
        (("config.yaml", "metrics.json"), None, False, OTHER),  # another config's result
        (("config.yaml", "metrics.json"), "Traceback ...\nOSError: upload failed", True, FAILED),
        (("config.yaml", "checkpoints/last.ckpt"), None, True, INTERRUPTED),  # killed, no word
        (("config.yaml", "checkpoints/last.ckpt"), f"{INTERRUPTED_BY} SIGTERM at epoch 3", True, INTERRUPTED),
        (("config.yaml", "checkpoints/last.ckpt"), f"{INTERRUPTED_BY} SIGTERM at epoch 3", False, OTHER),
        (("config.yaml", "metrics.json"), "Traceback ...\nOSError: upload failed", False, FAILED),
        (("config.yaml", "checkpoints/last.ckpt"), "Traceback ...\nFloatingPointError: NaN", True, FAILED),
        (("config.yaml",), None, True, FAILED),  # killed before its first checkpoint
    ],
)
def test_earlier_state(
    tmp_path: Path, files: tuple[str, ...], error: str | None, same: bool, state: str
) -> None:
    assert earlier_state(_folder(tmp_path, *files, error=error), lambda: same) == state


def test_a_corrupt_metrics_file_is_no_finished_run(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "config.yaml", "checkpoints/last.ckpt")
    (folder / "metrics.json").write_text('{"val/loss": 0.')  # cut off mid-write
    assert earlier_state(folder, lambda: True) == FAILED


def test_changed_keys_names_every_differing_leaf_by_its_dotted_key() -> None:
    old = {"seed": 0, "model": {"lr": 1e-3, "net": {"hidden_dims": [2]}}, "name": "a", "gone": 1}
    new = {"seed": 0, "model": {"lr": 1e-2, "net": {"hidden_dims": [2, 2]}}, "name": "a", "added": {"x": 1}}
    assert changed_keys(old, new) == ["added", "gone", "model.lr", "model.net.hidden_dims"]
    assert changed_keys(old, old) == []


def test_config_changes_leave_out_how_a_command_runs(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    recorded = {
        "seed": 1,
        "overwrite": False,
        "print_config": True,
        "resume_in_place": True,
        "model": {"lr": 1},
    }
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(recorded))
    same_run = {**recorded, "overwrite": True, "print_config": False, "resume_in_place": False}
    assert config_changes(tmp_path, same_run) == []
    assert config_changes(tmp_path, {**same_run, "seed": 2}) == ["seed"]
    (tmp_path / ".hydra" / "config.yaml").write_text("- not\n- a mapping\n")
    assert config_changes(tmp_path, recorded) == [".hydra/config.yaml (missing or damaged)"]


def test_foreign_jobs_are_the_job_folders_a_sweep_does_not_name(tmp_path: Path) -> None:
    for name in ("0", "1", "2", "10", "batched", "notes"):
        (tmp_path / name).mkdir()
    for name in ("0", "1", "2", "10"):
        (tmp_path / name / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "batched" / ".hydra").mkdir()  # anything holding a job's record counts
    named = {tmp_path / "0", tmp_path / "1"}
    assert foreign_jobs(tmp_path, named) == ["2", "10", "batched"]
    assert foreign_jobs(tmp_path / "absent", named) == []

"""What a job started again finds in its folder (src.pipeline.run.earlier_state)."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.pipeline.run import FAILED, FINISHED, INTERRUPTED, INTERRUPTED_BY, NEW, OTHER, earlier_state


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

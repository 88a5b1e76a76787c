"""Checkpoints: last.ckpt is always the last state, metrics say which file they were measured on,
and nothing is loaded that could run code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.pipeline.checkpoints import CheckpointError, load_checkpoint, load_model
from src.pipeline.evaluation_run import evaluate_checkpoint
from src.pipeline.run import Run
from src.pipeline.training import train
from tests.helpers import FAST


def test_last_checkpoint_is_the_last_epoch_even_when_validation_is_rare(make_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = make_config(
        "data=lines2x2", *FAST, "trainer.max_epochs=7", "trainer.check_val_every_n_epoch=5",
        "callbacks.last_checkpoint.every_n_epochs=1",
    )  # fmt: skip
    metrics = train(Run(cfg, run))
    last, best = (load_checkpoint(run / "checkpoints" / name) for name in ("last.ckpt", "best.ckpt"))
    assert (last["epoch"], last["global_step"]) == (6, 7) and best["global_step"] == 5
    assert metrics["checkpoint"] == "checkpoints/last.ckpt" and metrics["steps"] == 7
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(make_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(Run(make_config("data=lines2x2", *FAST, "trainer.max_epochs=2"), run))
    crafted, marker = run / "checkpoints" / "crafted.ckpt", tmp_path / "code-ran"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["payload"] = _RunsCode(marker)
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match=r"crafted.ckpt holds more than tensors.*could run code"):
        load_checkpoint(crafted)
    with pytest.raises(CheckpointError, match="could run code"):
        evaluate_checkpoint(
            Run(OmegaConf.create({"ckpt_path": str(crafted), "figures": False}), tmp_path / "e")
        )
    assert not marker.exists()


def test_a_sparse_last_checkpoint_still_holds_the_final_state(make_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = make_config(
        "data=lines2x2", *FAST, "trainer.max_epochs=7", "callbacks.last_checkpoint.every_n_epochs=5"
    )
    metrics = train(Run(cfg, run))
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == metrics["steps"] == 7 and metrics["checkpoint"] == "checkpoints/last.ckpt"
    assert make_config("data=lines2x2").callbacks.last_checkpoint.every_n_epochs == 500
    assert make_config("data=lines").callbacks.last_checkpoint.every_n_epochs == 1


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a VAE on the 2x2 images, and a CA on 8x8 line images: three run folders."""
    from src.pipeline.config import compose_config

    root = tmp_path_factory.mktemp("runs")
    runs = []
    for name, overrides in [
        ("ca", ["data=lines2x2"]),
        ("vae", ["data=lines2x2", "model=vae"]),
        ("lines", ["data=lines", "data.image_size=8", "data.n_train=16", "data.n_val=8", "data.n_test=8"]),
    ]:
        folder = root / name
        train(
            Run(compose_config([*overrides, *FAST, "trainer.max_epochs=2", "figures=false"], folder), folder)
        )
        runs.append(folder)
    return tuple(runs)


def _planted(run: Path, checkpoint: Path) -> Path:
    """`checkpoint` copied into another run's checkpoints/ folder."""
    target = run / "checkpoints" / f"planted-{checkpoint.parent.parent.name}.ckpt"
    target.write_bytes(checkpoint.read_bytes())
    return target


def test_truncated_and_foreign_checkpoints_get_one_line_each(two_runs: tuple[Path, Path, Path]) -> None:
    ca, vae, lines = two_runs
    truncated = ca / "checkpoints" / "truncated.ckpt"
    truncated.write_bytes((ca / "checkpoints" / "last.ckpt").read_bytes()[:2000])
    with pytest.raises(
        CheckpointError, match=r"truncated.ckpt \(2000 bytes\) is truncated or not a checkpoint"
    ):
        load_model(truncated)
    with pytest.raises(CheckpointError, match=r"holds the weights of another model than src.models.vae"):
        load_model(_planted(vae, ca / "checkpoints" / "last.ckpt"))
    with pytest.raises(
        CheckpointError, match=r"not trained with the config beside it \(image_shape: checkpoint"
    ):
        load_model(_planted(lines, ca / "checkpoints" / "last.ckpt"))
    assert load_model(ca / "checkpoints" / "last.ckpt")[1]["global_step"] == 2

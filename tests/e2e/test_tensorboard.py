"""`logger=tensorboard`: the run's curves, results and figures, read back with TensorBoard's own
event reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import FAST, SMALL_DATA, src_run

pytestmark = pytest.mark.slow


def test_tensorboard_shows_the_curves_every_result_and_each_figure(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = src_run(
        "model=vae", "logger=tensorboard", *[o for o in FAST if not o.startswith("logger")],
        "trainer.max_epochs=2", *SMALL_DATA["lines"], f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scalars = set(tags["scalars"])
    assert {"train/loss_epoch", "val/loss", "test/recon_mse"} <= scalars
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    assert set(numbers) <= scalars  # ood/*, test/lines/*, test/heaviside/*, epochs, ... too
    for key in ("ood/circle/auroc", "test/lines/correct_fraction", "test/recon_mse"):
        assert events.Scalars(key)[-1].value == pytest.approx(metrics[key], rel=1e-6)
    assert len(events.Scalars("val/loss")) == 2  # one per epoch
    texts = {tag.removesuffix("/text_summary") for tag in tags["tensors"]}
    assert {"test/lines/outcome", "ood/score", "checkpoint"} <= texts
    figures = {path.stem for path in run_dir.glob("*.png")}
    assert {tag.removeprefix("figures/") for tag in tags["images"]} == figures
    image = events.Images("figures/reconstructions")[-1]
    assert image.width > 100 and image.height > 100

"""The OOD evaluation of a trained model writes its metrics and files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from src.evaluation import detection
from src.pipeline.run import Run
from src.pipeline.training import train
from tests.helpers import FAST

TINY_LINES = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "trainer.max_epochs=2"]


def test_training_run_evaluates_ood_and_writes_its_files(make_config, tmp_path: Path) -> None:
    cfg = make_config("model=vae", *FAST, *TINY_LINES, "ood.score=neg_elbo")
    metrics = train(Run(cfg, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("blob", "scratch", "crossing", "circle", "noise"):
        for key in ("auroc", "aupr", "fpr95", "precision_in", "recall_in", "f1_in", "precision_ood"):
            assert 0 <= metrics[f"ood/{name}/{key}"] <= 1
        assert f"ood/{name}/auroc_neg_elbo_ic" in metrics
    assert metrics["ood/score"] == "neg_elbo" and metrics["ood/threshold_method"] == "percentile"
    with (run / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    val_scores = torch.tensor([float(row["neg_elbo"]) for row in rows if row["set"] == "val"])
    # The threshold comes from the validation rows alone (saved to 6 digits).
    assert metrics["ood/threshold"] == pytest.approx(detection.percentile_threshold(val_scores, 99), rel=1e-5)
    assert {row["set"] for row in rows} == {"val", "test", "blob", "scratch", "crossing", "circle", "noise"}
    assert len(rows) == 32 * 7 and {row["label"] for row in rows if row["set"] == "blob"} == {"1"}
    assert "| 0 |" in (run / "ood.md").read_text() and "| 1 |" in (run / "ood.md").read_text()
    for figure in ("ood_roc.png", "ood_histograms.png", "ood_latent.png"):
        assert (run / figure).is_file(), figure
    assert json.loads((run / "metrics.json").read_text())["ood/blob/auroc"] == metrics["ood/blob/auroc"]


def test_best_f1_is_named_an_upper_bound_and_ood_can_be_switched_off(make_config, tmp_path: Path) -> None:
    cfg = make_config(*FAST, *TINY_LINES, "ood.threshold.method=best_f1", "ood.plots=false")
    metrics = train(Run(cfg, tmp_path / "run"))
    assert "ood/threshold" not in metrics and "ood/blob/threshold_best_f1_upper_bound" in metrics
    assert "upper bound" in (tmp_path / "run" / "ood.md").read_text()
    cfg = make_config(*FAST, *TINY_LINES, "ood.enabled=false")
    assert not any(key.startswith("ood/") for key in train(Run(cfg, tmp_path / "off")))
    with pytest.raises(ValueError, match="ood.score='kl' is not a score of this model"):
        train(Run(make_config(*FAST, *TINY_LINES, "ood.score=kl"), tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before training

"""The evaluations behind report 004's observations, on cases whose answer is known: the per-class
recall and AUROC of an OOD set, the objective on every split at the same weights, the latent interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.data.lines import Lines2x2DataModule
from src.evaluation.base import EvaluationContext
from src.evaluation.interpolation import LatentInterpolation, interpolate
from src.evaluation.ood import by_class
from src.evaluation.split_losses import SplitLosses
from src.models.vae import VariationalAutoencoder

NET = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [4]}


def test_each_class_of_an_ood_set_gets_its_recall_and_auroc() -> None:
    in_scores = torch.tensor([0.0, 1.0, 2.0, 3.0])
    out_scores = torch.tensor([0.5, 0.5, 5.0, 4.0, 2.5, 0.5])
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    measured = by_class(in_scores, out_scores, 1.5, labels, ["T-shirt/top", "Trouser", "Bag"])
    assert measured == {
        # 0.5 beats one of four in-distribution scores; 2.5 beats three; 4 and 5 beat all
        "T-shirt-top": {"recall": 0.0, "auroc": pytest.approx(0.25)},
        "Trouser": {"recall": 1.0, "auroc": pytest.approx(1.0)},
        "Bag": {"recall": 1.0, "auroc": pytest.approx(0.75)},
    }
    # The set's AUROC is the class-size-weighted mean of the classes'.
    from src.evaluation.detection import auroc

    weighted = (3 * 0.25 + 2 * 1.0 + 0.75) / 6
    assert auroc(in_scores, out_scores) == pytest.approx(weighted)


def test_identical_splits_give_identical_losses_even_when_the_objective_samples(tmp_path: Path) -> None:
    """Every split of the 2x2 data holds the same images, and each split draws the same noise: the
    sampled VAE objective is then the same number on all three, and equals the one computed by
    hand with that noise."""
    torch.manual_seed(0)
    model = VariationalAutoencoder(NET, [1, 2, 2], latent_dim=1)
    datamodule = Lines2x2DataModule()
    datamodule.setup()
    context = EvaluationContext(tmp_path, False, OmegaConf.create({}))
    metrics = SplitLosses(seed=3)(model, datamodule, context).metrics
    assert metrics["splits/images"] == 4
    assert metrics["splits/train/loss"] == metrics["splits/val/loss"] == metrics["splits/test/loss"]
    torch.manual_seed(3)
    with torch.no_grad():
        loss, terms = model.eval().training_loss(datamodule.images("test"))
    assert metrics["splits/test/loss"] == pytest.approx(float(loss))
    assert metrics["splits/test/kl"] == pytest.approx(float(terms["kl"]))


def test_interpolation_ends_at_the_reconstructions_of_its_two_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VariationalAutoencoder(NET, [1, 2, 2], latent_dim=2).eval()
    datamodule = Lines2x2DataModule()
    datamodule.setup()
    images = datamodule.images("test")
    with torch.no_grad():
        path = interpolate(model, images[0], images[3], 5)
        assert torch.allclose(path[0], model.reconstruct(images[:1])[0])
        assert torch.allclose(path[-1], model.reconstruct(images[3:])[0])
    result = LatentInterpolation(pairs=3, steps=5)(model, datamodule, EvaluationContext(tmp_path, True, None))
    assert [p.name for p in result.figures] == ["interpolation.png"]
    assert 0 < result.metrics["test/interpolation/path_cosine"] <= 1


def test_the_threshold_closest_to_table2_is_found_with_its_numbers() -> None:
    """99 of 100 in-distribution scores at 0 (one at 10), 90 of 100 OOD scores at 20 (ten at 0):
    calling scores above 0 OOD gives recall 0.99 and 0.90, precision 99/109 and 90/91, the
    report's pattern; every other threshold is farther from it."""
    import numpy as np

    from src.analysis.table2_fit import closest_threshold

    inside = np.r_[np.zeros(99), 10.0]
    outside = np.r_[np.zeros(10), np.full(90, 20.0)]
    fit = closest_threshold(inside, outside, validation=np.r_[np.zeros(3), 1.0])
    p_in, p_out = 99 / 109, 90 / 91
    expected = (p_in, 0.99, 2 * p_in * 0.99 / (p_in + 0.99), p_out, 0.90, 2 * p_out * 0.9 / (p_out + 0.9))
    assert fit.threshold == 0.0 and fit.validation_percentile == 75.0
    assert fit.numbers == pytest.approx(expected)
    assert fit.deviation == pytest.approx(
        max(abs(a - b) for a, b in zip(expected, (0.91, 0.99, 0.94, 0.98, 0.90, 0.94), strict=True))
    )

"""OOD metrics, thresholds and sets against hand-computed values; the evaluation end to end on lines."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from src import ood
from src.data import LinesDataModule, line_images
from src.models import ClassicalAutoencoder, VariationalAutoencoder
from src.run import train
from tests.conftest import FAST

DENSE = {"_target_": "src.nets.DenseNet", "hidden_dims": [8]}
TINY_LINES = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "trainer.max_epochs=2"]


def test_auroc_is_one_when_perfectly_separated_even_for_large_close_scores() -> None:
    # torchmetrics squashes predictions outside [0, 1] with a sigmoid: 1000.1 and 1000.2 would tie.
    in_scores = torch.tensor([1000.0, 1000.1, 1000.2])
    ood_scores = torch.tensor([1000.3, 1000.4])
    assert ood.auroc(in_scores, ood_scores) == 1.0
    assert ood.auroc(ood_scores, in_scores) == 0.0


def test_auroc_is_one_half_for_identical_distributions() -> None:
    assert ood.auroc(torch.ones(10), torch.ones(10)) == 0.5
    generator = torch.Generator().manual_seed(0)
    same = ood.auroc(torch.randn(5000, generator=generator), torch.randn(5000, generator=generator))
    assert abs(same - 0.5) < 0.02


def test_percentile_threshold_on_known_numbers() -> None:
    assert ood.percentile_threshold(torch.arange(101.0), 99) == pytest.approx(99.0)
    assert ood.percentile_threshold(torch.arange(11.0), 95) == pytest.approx(9.5)
    assert ood.choose_threshold("fixed", torch.arange(5.0), value=3) == 3.0
    assert ood.choose_threshold("best_f1", torch.arange(5.0)) is None
    with pytest.raises(ValueError, match="ood.threshold.value"):
        ood.choose_threshold("fixed", torch.arange(5.0))
    with pytest.raises(ValueError, match="must be one of"):
        ood.choose_threshold("median", torch.arange(5.0))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        ood.percentile_threshold(torch.arange(5.0), 120)


def test_fpr95_on_a_constructed_case() -> None:
    # 19 of 20 OOD scores are 10; catching them (TPR 0.95) also flags the 2 of 10 in-distribution 20s.
    ood_scores = torch.tensor([10.0] * 19 + [0.0])
    in_scores = torch.tensor([1.0] * 8 + [20.0] * 2)
    assert ood.fpr_at_tpr(in_scores, ood_scores) == pytest.approx(0.2)
    assert ood.fpr_at_tpr(torch.zeros(10), torch.ones(20)) == 0.0


def test_precision_recall_f1_of_both_classes_on_a_hand_computed_confusion_matrix() -> None:
    # threshold 0.5: in-distribution 0.9 is flagged (FP = 1, TN = 3); OOD 0.8, 0.95 flagged (TP = 2, FN = 2).
    metrics = ood.detection_metrics(
        torch.tensor([0.1, 0.2, 0.3, 0.9]), torch.tensor([0.8, 0.95, 0.4, 0.05]), 0.5
    )
    assert metrics["precision_ood"] == pytest.approx(2 / 3)
    assert metrics["recall_ood"] == pytest.approx(1 / 2)
    assert metrics["f1_ood"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert metrics["precision_in"] == pytest.approx(3 / 5)  # called in: 3 TN + 2 FN
    assert metrics["recall_in"] == pytest.approx(3 / 4)
    assert metrics["f1_in"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert metrics["auroc"] == pytest.approx(10 / 16)  # pairs (ood > in): 4 + 4 + 1 + 1 of 16


def test_best_f1_threshold_is_the_label_chosen_optimum() -> None:
    # t = 2 flags 3, 2.5, 4, 5: F1 = 6/7, better than t = 3 (0.8) or t = 2.5 (2/3).
    threshold = ood.best_f1_threshold(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.5, 4.0, 5.0]))
    assert threshold == 2.0
    f1 = ood.detection_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.5, 4.0, 5.0]), threshold)[
        "f1_ood"
    ]
    assert f1 == pytest.approx(6 / 7)


def _lines(count: int = 16, size: int = 32) -> LinesDataModule:
    return LinesDataModule(n_train=count, n_val=count, n_test=count, image_size=size)


def test_shifts_of_the_test_set() -> None:
    datamodule = _lines()
    test = datamodule.images("test")
    sets = ood.ood_sets(["hflip", "vflip", "invert", "noise"], datamodule, count=None)
    assert torch.equal(sets["hflip"], test.flip(-1))
    assert torch.equal(sets["vflip"], test.flip(-2))
    assert torch.equal(sets["invert"], 1 - test)
    noise = sets["noise"]
    assert noise.min() >= 0 and noise.max() <= 1 and (noise - test).abs().max() <= 0.5
    assert (noise - test).abs().mean() > 0.1


def test_line_defects_change_the_expected_pixels() -> None:
    seed = torch.Generator().manual_seed
    clean, angles = ood._random_lines(50, 32, seed(3))
    blob = ood.lines_with_blob(50, 32, seed(3))
    changed = (blob != clean).flatten(1).sum(1)
    # A disc of radius 3.2 pixels: about pi * 3.2^2 = 32 pixels.
    assert changed.min() >= 25 and changed.max() <= 45
    scratch = ood.lines_with_scratch(50, 32, seed(3))
    changed = (scratch != clean).flatten(1).sum(1)
    assert changed.min() >= 12 and changed.max() <= 40  # a 1-pixel segment 16 pixels long
    crossing = ood.crossing_lines(50, 32, seed(3))
    # XOR of two half-planes: never a half-plane itself (that would need the same or opposite angle).
    mismatch = torch.minimum((crossing != clean).flatten(1).sum(1), (crossing == clean).flatten(1).sum(1))
    assert mismatch.min() > 100
    circles = ood.circles(50, 32, seed(3))
    assert set(circles.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(line_images(angles, 32), clean)


def test_ood_sets_refuse_unknown_names_and_the_training_set() -> None:
    with pytest.raises(ValueError, match="unknown set 'rotate'"):
        ood.ood_sets(["rotate"], _lines(), count=None)
    with pytest.raises(ValueError, match="needs 28x28 images"):
        ood.ood_sets(["mnist"], _lines(), count=None)


def test_png_bits_grow_with_image_complexity() -> None:
    flat = torch.zeros(1, 1, 28, 28)
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bits = ood.png_bits(torch.cat([flat, noise]))
    assert bits[0] < 8 * 200 < 8 * 28 * 28 < bits[1]


def _vae(latent_dim: int = 2) -> VariationalAutoencoder:
    return VariationalAutoencoder(DENSE, [1, 4, 4], latent_dim=latent_dim)


def test_importance_weighted_bound_is_exact_when_posterior_equals_prior() -> None:
    # Zero decoder: p(x|z) = 0.5 per pixel for every z; zero mu/logvar heads: q(z|x) = p(z), so every
    # importance weight is p(x) and the bound equals -log p(x) = 16 log 2 for any K.
    model = _vae()
    for module in (model.net.decoder, model.mu, model.logvar):
        for param in module.parameters():
            nn.init.zeros_(param)
    images = torch.rand(3, 1, 4, 4)
    for samples in (1, 7):
        assert torch.allclose(
            model.importance_weighted_nll(images, samples), torch.full((3,), 16 * math.log(2))
        )
    scores = model.ood_scores(images, samples=4)
    assert set(scores) == {"recon_mse", "recon_bce", "kl", "neg_elbo", "neg_elbo_iw"}
    assert torch.allclose(scores["neg_elbo"], scores["neg_elbo_iw"])
    with pytest.raises(ValueError, match="at least 1"):
        model.importance_weighted_nll(images, 0)


def test_score_images_adds_the_complexity_corrected_likelihood() -> None:
    images = torch.rand(5, 1, 4, 4)
    model = _vae()
    scores = ood.score_images(model, images, batch_size=2, samples=3)
    expected = scores["neg_elbo"] / math.log(2) - ood.png_bits(images)
    assert torch.allclose(scores["neg_elbo_ic"], expected)
    assert torch.equal(
        scores["neg_elbo_iw"], ood.score_images(model, images, batch_size=2, samples=3)["neg_elbo_iw"]
    )
    ca_scores = ood.score_images(ClassicalAutoencoder(DENSE, [1, 4, 4]), images)
    assert set(ca_scores) == {"recon_mse", "recon_bce", "png_bits"}


def test_training_run_evaluates_ood_and_writes_its_files(make_config, tmp_path: Path) -> None:
    cfg = make_config("model=vae", *FAST, *TINY_LINES, "ood.score=neg_elbo")
    metrics = train(cfg, tmp_path / "run")
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
    assert metrics["ood/threshold"] == pytest.approx(ood.percentile_threshold(val_scores, 99), rel=1e-5)
    assert {row["set"] for row in rows} == {"val", "test", "blob", "scratch", "crossing", "circle", "noise"}
    assert len(rows) == 32 * 7 and {row["label"] for row in rows if row["set"] == "blob"} == {"1"}
    assert "| 0 |" in (run / "ood.md").read_text() and "| 1 |" in (run / "ood.md").read_text()
    for figure in ("ood_roc.png", "ood_histograms.png", "ood_latent.png"):
        assert (run / figure).is_file(), figure
    assert json.loads((run / "metrics.json").read_text())["ood/blob/auroc"] == metrics["ood/blob/auroc"]


def test_best_f1_is_named_an_upper_bound_and_ood_can_be_switched_off(make_config, tmp_path: Path) -> None:
    cfg = make_config(*FAST, *TINY_LINES, "ood.threshold.method=best_f1", "ood.plots=false")
    metrics = train(cfg, tmp_path / "run")
    assert "ood/threshold" not in metrics and "ood/blob/threshold_best_f1_upper_bound" in metrics
    assert "upper bound" in (tmp_path / "run" / "ood.md").read_text()
    cfg = make_config(*FAST, *TINY_LINES, "ood.enabled=false")
    assert not any(key.startswith("ood/") for key in train(cfg, tmp_path / "off"))
    with pytest.raises(ValueError, match="ood.score='kl' is not a score of this model"):
        train(make_config(*FAST, *TINY_LINES, "ood.score=kl"), tmp_path / "bad")


@pytest.mark.parametrize("data", ["lines", "lines2x2", "mnist", "fashion_mnist"])
def test_every_dataset_gets_its_ood_config(make_config, data: str) -> None:
    cfg = make_config(f"data={data}")
    assert cfg.ood.enabled == (data != "lines2x2")
    assert cfg.ood.threshold.method == "percentile" and cfg.ood.threshold.percentile == 99
    other = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}
    if data in other:
        assert cfg.ood.sets[0] == other[data]


@pytest.mark.parametrize(
    ("experiment", "data", "model", "score"),
    [
        ("ood_mnist_vae", "mnist", "VariationalAutoencoder", "neg_elbo"),
        ("ood_mnist_ca", "mnist", "ClassicalAutoencoder", "recon_bce"),
        ("ood_fashion_vae", "fashion_mnist", "VariationalAutoencoder", "neg_elbo_ic"),
        ("anomaly_lines_ca", "lines", "ClassicalAutoencoder", "recon_mse"),
        ("anomaly_lines_vae", "lines", "VariationalAutoencoder", "neg_elbo"),
    ],
)
def test_experiment_presets_compose(make_config, experiment: str, data: str, model: str, score: str) -> None:
    cfg = make_config(f"experiment={experiment}")
    assert cfg.data.name == data and cfg.model._target_.endswith(model)
    assert cfg.ood.score == score and cfg.name == experiment


def test_best_f1_threshold_matches_a_search_over_every_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    in_scores = torch.randint(0, 30, (200,), generator=generator).double()  # many ties
    ood_scores = torch.randint(10, 40, (100,), generator=generator).double()
    best = ood.detection_metrics(in_scores, ood_scores, ood.best_f1_threshold(in_scores, ood_scores))[
        "f1_ood"
    ]
    every = [ood.detection_metrics(in_scores, ood_scores, t - 0.5)["f1_ood"] for t in range(0, 42)]
    assert best == pytest.approx(max(every))

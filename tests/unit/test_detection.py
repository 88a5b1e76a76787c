"""OOD sets, scores, thresholds and detection metrics on known numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from src.data import ood_sets
from src.data.lines import LinesDataModule, line_images
from src.evaluation import detection, scoring
from src.models.ca import ClassicalAutoencoder
from src.models.vae import VariationalAutoencoder

DENSE = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [8]}


def _lines(count: int = 16, size: int = 32) -> LinesDataModule:
    return LinesDataModule(n_train=count, n_val=count, n_test=count, image_size=size)


def _vae(latent_dim: int = 2) -> VariationalAutoencoder:
    return VariationalAutoencoder(DENSE, [1, 4, 4], latent_dim=latent_dim)


def test_auroc_is_one_when_perfectly_separated_even_for_large_close_scores() -> None:
    # torchmetrics squashes predictions outside [0, 1] with a sigmoid: 1000.1 and 1000.2 would tie.
    in_scores = torch.tensor([1000.0, 1000.1, 1000.2])
    ood_scores = torch.tensor([1000.3, 1000.4])
    assert detection.auroc(in_scores, ood_scores) == 1.0
    assert detection.auroc(ood_scores, in_scores) == 0.0


def test_auroc_is_one_half_for_identical_distributions() -> None:
    assert detection.auroc(torch.ones(10), torch.ones(10)) == 0.5
    generator = torch.Generator().manual_seed(0)
    same = detection.auroc(torch.randn(5000, generator=generator), torch.randn(5000, generator=generator))
    assert abs(same - 0.5) < 0.02


def test_percentile_threshold_on_known_numbers() -> None:
    assert detection.percentile_threshold(torch.arange(101.0), 99) == pytest.approx(99.0)
    assert detection.percentile_threshold(torch.arange(11.0), 95) == pytest.approx(9.5)
    assert detection.choose_threshold("fixed", torch.arange(5.0), value=3) == 3.0
    assert detection.choose_threshold("best_f1", torch.arange(5.0)) is None
    with pytest.raises(ValueError, match="ood.threshold.value"):
        detection.choose_threshold("fixed", torch.arange(5.0))
    with pytest.raises(ValueError, match="must be one of"):
        detection.choose_threshold("median", torch.arange(5.0))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        detection.percentile_threshold(torch.arange(5.0), 120)


def test_fpr95_on_a_constructed_case() -> None:
    # 19 of 20 OOD scores are 10; catching them (TPR 0.95) also flags the 2 of 10 in-distribution 20s.
    ood_scores = torch.tensor([10.0] * 19 + [0.0])
    in_scores = torch.tensor([1.0] * 8 + [20.0] * 2)
    assert detection.fpr_at_tpr(in_scores, ood_scores) == pytest.approx(0.2)
    assert detection.fpr_at_tpr(torch.zeros(10), torch.ones(20)) == 0.0


def test_precision_recall_f1_of_both_classes_on_a_hand_computed_confusion_matrix() -> None:
    # threshold 0.5: in-distribution 0.9 is flagged (FP = 1, TN = 3); OOD 0.8, 0.95 flagged (TP = 2, FN = 2).
    metrics = detection.detection_metrics(
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
    threshold = detection.best_f1_threshold(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.5, 4.0, 5.0]))
    assert threshold == 2.0
    f1 = detection.detection_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.5, 4.0, 5.0]), threshold)[
        "f1_ood"
    ]
    assert f1 == pytest.approx(6 / 7)


def test_shifts_of_the_test_set() -> None:
    datamodule = _lines()
    test = datamodule.images("test")
    sets = {
        name: ood_set.images
        for name, ood_set in ood_sets.ood_sets(
            ["hflip", "vflip", "invert", "noise"], datamodule, None
        ).items()
    }
    assert torch.equal(sets["hflip"], test.flip(-1))
    assert torch.equal(sets["vflip"], test.flip(-2))
    assert torch.equal(sets["invert"], 1 - test)
    noise = sets["noise"]
    assert noise.min() >= 0 and noise.max() <= 1 and (noise - test).abs().max() <= 0.5
    assert (noise - test).abs().mean() > 0.1


def test_line_defects_change_the_expected_pixels() -> None:
    seed = torch.Generator().manual_seed
    clean, angles = ood_sets._random_lines(50, 32, seed(3))
    blob = ood_sets.lines_with_blob(50, 32, seed(3))
    changed = (blob != clean).flatten(1).sum(1)
    # A disc of radius 3.2 pixels: about pi * 3.2^2 = 32 pixels.
    assert changed.min() >= 25 and changed.max() <= 45
    scratch = ood_sets.lines_with_scratch(50, 32, seed(3))
    changed = (scratch != clean).flatten(1).sum(1)
    assert changed.min() >= 12 and changed.max() <= 40  # a 1-pixel segment 16 pixels long
    crossing = ood_sets.crossing_lines(50, 32, seed(3))
    # XOR of two half-planes: never a half-plane itself (that would need the same or opposite angle).
    mismatch = torch.minimum((crossing != clean).flatten(1).sum(1), (crossing == clean).flatten(1).sum(1))
    assert mismatch.min() > 100
    circles = ood_sets.circles(50, 32, seed(3))
    assert set(circles.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(line_images(angles, 32), clean)


def test_ood_sets_refuse_unknown_names_and_the_training_set() -> None:
    with pytest.raises(ValueError, match=r"unknown set\(s\) \['rotate'\]"):
        ood_sets.ood_sets(["rotate"], _lines(), count=None)
    with pytest.raises(ValueError, match="needs 28x28 images"):
        ood_sets.ood_sets(["mnist"], _lines(), count=None)


def test_png_bits_are_computed_once_per_set_of_images(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)).round()
    first = scoring.png_bits(images)
    encoded = []
    monkeypatch.setattr(scoring.Image, "fromarray", lambda *a, **k: encoded.append(1) or None)
    again = scoring.png_bits(images.clone())  # the same content, another tensor: from the cache
    assert torch.equal(first, again) and not encoded
    again[0] = -1  # a caller's copy: the cached values stay
    assert torch.equal(scoring.png_bits(images), first)
    with pytest.raises(AttributeError):  # other content is encoded (here by the stub, which fails)
        scoring.png_bits(1 - images)
    assert encoded


def test_png_bits_grow_with_image_complexity() -> None:
    flat = torch.zeros(1, 1, 28, 28)
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bits = scoring.png_bits(torch.cat([flat, noise]))
    assert bits[0] < 8 * 200 < 8 * 28 * 28 < bits[1]


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
    scores = model.scores(images, samples=4)
    assert set(model.anomaly_scores) == {
        "recon_mse",
        "recon_bce",
        "kl",
        "neg_elbo",
        "neg_elbo_iw",
        "likelihood_regret",
    }
    # The regret is an optimisation, computed by score_images on request (ood.regret_steps).
    assert set(model.anomaly_scores) - {"likelihood_regret"} <= set(scores)
    assert torch.allclose(scores["neg_elbo"], scores["neg_elbo_iw"])
    with pytest.raises(ValueError, match="at least 1"):
        model.importance_weighted_nll(images, 0)


def test_score_images_adds_the_complexity_corrected_likelihood() -> None:
    images = torch.rand(5, 1, 4, 4)
    model = _vae()
    scores = scoring.score_images(model, images, batch_size=2, samples=3)
    expected = scores["neg_elbo"] / math.log(2) - scoring.png_bits(images)
    assert torch.allclose(scores["neg_elbo_ic"], expected)
    assert torch.equal(
        scores["neg_elbo_iw"], scoring.score_images(model, images, batch_size=2, samples=3)["neg_elbo_iw"]
    )
    ca_scores = scoring.score_images(ClassicalAutoencoder(DENSE, [1, 4, 4]), images)
    assert set(ca_scores) == {"recon_mse", "recon_bce", "png_bits"}


def test_best_f1_threshold_matches_a_search_over_every_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    in_scores = torch.randint(0, 30, (200,), generator=generator).double()  # many ties
    ood_scores = torch.randint(10, 40, (100,), generator=generator).double()
    best = detection.detection_metrics(
        in_scores, ood_scores, detection.best_f1_threshold(in_scores, ood_scores)
    )["f1_ood"]
    every = [detection.detection_metrics(in_scores, ood_scores, t - 0.5)["f1_ood"] for t in range(0, 42)]
    assert best == pytest.approx(max(every))

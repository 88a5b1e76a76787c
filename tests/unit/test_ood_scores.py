"""The OOD scores beyond raw likelihood, on models whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from src.evaluation.scoring import score_images
from src.models.vae import VariationalAutoencoder
from tests.helpers import SHARED_DATASETS, needs_shared_mnist

NET = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [4]}


def _constant_decoder_vae(mu_bias: float) -> VariationalAutoencoder:
    """A VAE whose decoder ignores z (its output is sigmoid(0) = 0.5 everywhere) and whose encoder
    gives mu = mu_bias, log-variance 0 for every image: the best posterior is then N(0, 1), and the
    regret is exactly the KL that the encoder's posterior pays, mu_bias^2 / 2."""
    model = VariationalAutoencoder(NET, [1, 2, 2], latent_dim=1)
    with torch.no_grad():
        for parameter in [
            *model.net.decoder.parameters(),
            *model.mu.parameters(),
            *model.logvar.parameters(),
        ]:
            parameter.zero_()
        model.mu.bias.fill_(mu_bias)
    return model.eval()


IMAGES = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.float32).view(2, 1, 2, 2)


def test_the_regret_of_an_image_the_encoder_already_fits_is_zero() -> None:
    regret = _constant_decoder_vae(0.0).likelihood_regret(IMAGES, steps=50)
    assert torch.equal(regret, torch.zeros(2))


def test_the_regret_is_the_kl_a_misplaced_posterior_pays() -> None:
    regret = _constant_decoder_vae(3.0).likelihood_regret(IMAGES, steps=300, lr=0.05)
    assert regret == pytest.approx(torch.full((2,), 4.5), abs=1e-3)


def test_regret_is_a_score_only_when_asked_for_and_leaves_the_weights_alone() -> None:
    model = _constant_decoder_vae(3.0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert "likelihood_regret" not in score_images(model, IMAGES)
    scores = score_images(model, IMAGES, regret_steps=300)
    assert scores["likelihood_regret"].tolist() == pytest.approx([4.5, 4.5], abs=0.01)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_dose_is_the_negative_log_density_of_the_validation_statistics() -> None:
    """One statistic, standard normal over 20000 validation images (2000 of them fitted): the
    kernel density is the normal density smoothed by the kernel (variance 1 + h^2, Scott's
    h = 2000^(-1/5)), so dose is -log N(x; 0, 1 + h^2) at x = 0 and 1; a statistic without spread is
    left out; validation images are scored by the other fold's densities, others by both folds'."""
    from src.evaluation.typicality import Typicality, dose_scores, spread_statistics

    generator = torch.Generator().manual_seed(0)
    validation = {
        "kl": torch.randn(20000, generator=generator, dtype=torch.float64),
        "flat": torch.ones(20000),
    }
    assert spread_statistics(validation, None) == ["kl"]
    # Spread over the set, but constant over the images the densities are fitted on: left out.
    spiked = torch.ones(20000, dtype=torch.float64)
    spiked[5] = 2.0  # not among the 2000 evenly spaced images that are fitted
    assert list(Typicality({"kl": validation["kl"], "spiked": spiked}, ["kl", "spiked"]).densities) == ["kl"]
    dose = Typicality(validation, ["kl"])({"kl": torch.tensor([0.0, 1.0])})
    variance = 1 + 2000 ** (-2 / 5)
    expected = [0.5 * math.log(2 * math.pi * variance) + x**2 / (2 * variance) for x in (0.0, 1.0)]
    assert dose.tolist() == pytest.approx(expected, abs=0.03)
    test = {"kl": torch.tensor([0.0, 1.0]), "flat": torch.ones(2)}
    cross_fitted, others = dose_scores(validation, {"test": test})
    even, odd = (Typicality({"kl": validation["kl"][fold::2]}, ["kl"]) for fold in (0, 1))
    assert cross_fitted[0::2].tolist() == pytest.approx(odd({"kl": validation["kl"][0::2]}).tolist())
    assert others["test"].tolist() == pytest.approx(((even(test) + odd(test)) / 2).tolist())
    assert others["test"].tolist() == pytest.approx(expected, abs=0.05)


def test_the_log_density_is_scipys_kernel_density_over_several_batches() -> None:
    """DoSE's densities, evaluated in torch in batches, equal scipy's gaussian_kde.logpdf, far out in
    the tails (where a naive sum of exponentials underflows) included."""
    from scipy.stats import gaussian_kde

    from src.evaluation import typicality

    generator = torch.Generator().manual_seed(1)
    fitted = torch.randn(300, generator=generator, dtype=torch.float64) * 3 + 1
    values = torch.cat([torch.linspace(-200, 200, 9001, dtype=torch.float64), fitted[:5]])
    density = gaussian_kde(fitted.numpy())
    computed = typicality.log_density(fitted, float(density.covariance[0, 0]), values)
    assert len(values) > typicality.SCORED_BATCH
    assert torch.allclose(computed, torch.from_numpy(density.logpdf(values.numpy())), rtol=1e-12, atol=1e-9)


def test_the_likelihood_ratio_against_the_model_itself_is_zero() -> None:
    from src.evaluation.scorer import likelihood_ratio

    model = VariationalAutoencoder(NET, [1, 2, 2], latent_dim=1).eval()
    scores = score_images(model, IMAGES)
    assert torch.equal(
        likelihood_ratio(scores, score_images(model, IMAGES)), torch.zeros(2, dtype=torch.float64)
    )


def test_mutation_replaces_that_share_of_pixels_the_same_way_each_time() -> None:
    from src.data.memory import mutated

    images = torch.zeros(200, 1, 28, 28)
    changed = mutated(images, 0.2) != images
    assert 0.19 < changed.float().mean() < 0.21 and torch.equal(mutated(images, 0.2), mutated(images, 0.2))
    assert torch.equal(mutated(images, 0.0), images)


@needs_shared_mnist
def test_a_background_model_trains_on_mutated_pixels_only() -> None:
    """The training batches are served mutated; the images every evaluation reads, and the
    validation batches, are not."""
    from src.data.torchvision_sets import TorchvisionDataModule

    datamodule = TorchvisionDataModule(root=str(SHARED_DATASETS), download=False, mutation_rate=0.2)
    served = datamodule._dataset("train").tensors[0]
    assert 0.15 < (served != datamodule.images("train")).float().mean() < 0.25
    assert torch.equal(next(iter(datamodule.val_dataloader()))[0], datamodule.images("val")[:128])


def test_the_ood_evaluation_adds_the_ratio_dose_regret_and_neighbours_for_every_set(tmp_path) -> None:  # noqa: ANN001
    """With the model as its own background the ratio is 0 everywhere; DoSE and the regret are
    scored for every set and saved; the ratio can decide; a training image is its own neighbour."""
    from src.data.lines import Lines2x2DataModule
    from src.evaluation.ood import evaluate
    from src.evaluation.scorer import OODSettings
    from src.reporting.tables import read_scores_csv

    torch.manual_seed(0)
    model = VariationalAutoencoder(NET, [1, 2, 2], latent_dim=1).eval()
    datamodule = Lines2x2DataModule()
    datamodule.setup()
    settings = OODSettings.of(
        {
            "sets": ["hflip", "invert"],
            "score": "likelihood_ratio",
            "threshold": {"method": "percentile", "percentile": 99.0},
            "background": "itself",
            "regret_steps": 5,
            "neighbours": {"k": 1, "reference_images": None},
        }
    )
    result = evaluate(settings, model, datamodule, tmp_path, figures=False, background=model)
    scores = read_scores_csv(tmp_path / "scores.csv")
    for name in ("val", "test", "hflip", "invert"):
        assert scores[name]["likelihood_ratio"] == [0.0] * 4
        assert len(scores[name]["dose"]) == 4 and min(scores[name]["likelihood_regret"]) >= 0
    # Every test image of the 2x2 data is a training image: its nearest neighbour is itself.
    assert scores["test"]["pixel_knn"] == [0.0] * 4 and scores["test"]["pixel_lof"] == [0.0] * 4
    assert result.metrics["ood/score"] == "likelihood_ratio"
    assert "ood/invert/auroc_dose" in result.metrics and "ood/hflip/auroc_pixel_lof" in result.metrics
    costs = {
        key.removeprefix("ood/time_per_1000_images/"): value
        for key, value in result.metrics.items()
        if "/time_per_1000_images/" in key
    }
    assert set(costs) >= {
        "recon_mse",
        "neg_elbo",
        "likelihood_regret",
        "likelihood_ratio",
        "dose",
        "png_bits",
        "pixel_knn",
        "pixel_lof",
    }
    # Each score costs the pass, and the regret, the ratio and DoSE cost more on top of it.
    assert min(costs.values()) > 0 and costs["recon_mse"] == costs["neg_elbo"]
    assert min(costs["likelihood_regret"], costs["likelihood_ratio"], costs["dose"]) > costs["recon_mse"]


@pytest.mark.parametrize(("mean", "log_scale"), [(0.5, math.log(0.05)), (0.02, math.log(0.3)), (0.97, -6.0)])
def test_the_discretised_logistic_is_a_distribution_over_the_256_intensities(
    mean: float, log_scale: float
) -> None:
    from src.models.losses import discretized_logistic_nll

    pixels = torch.arange(256, dtype=torch.float64) / 255
    nll = discretized_logistic_nll(torch.full_like(pixels, mean), torch.full_like(pixels, log_scale), pixels)
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-6)
    middle = 128 / 255  # an inner bin's mass is the logistic CDF's rise across it
    cdf = torch.sigmoid((torch.tensor([middle + 0.5 / 255, middle - 0.5 / 255]) - mean) / math.exp(log_scale))
    assert torch.exp(-nll[128]).item() == pytest.approx(float(cdf[0] - cdf[1]), rel=1e-4, abs=1e-12)


def test_a_vae_with_the_discretised_logistic_decoder_learns_its_scale_and_scores_with_it() -> None:
    from src.models.losses import discretized_logistic_nll

    model = VariationalAutoencoder(NET, [1, 2, 2], reconstruction="discretized_logistic").eval()
    loss, _ = model.training_loss(IMAGES)
    loss.backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.abs().sum() > 0
    with torch.no_grad():
        evaluated = model.encode_pass(IMAGES)
        expected = discretized_logistic_nll(torch.sigmoid(evaluated.logits), model.log_scale, IMAGES).flatten(
            1
        )
        kl = 0.5 * (evaluated.code.square() + evaluated.logvar.exp() - 1 - evaluated.logvar).sum(1)
        assert model.scores(IMAGES)["neg_elbo"] == pytest.approx(expected.sum(1) + kl)


def test_the_neighbour_search_is_shared_by_content_and_gives_a_fresh_searchs_scores() -> None:
    """Members of a batched sweep search the same training images for the same sets: one search
    per distinct reference in a process, its scores of a set kept, each equal to a fresh search's."""
    from src.evaluation.neighbours import TrainingNeighbours, shared_neighbours

    generator = torch.Generator().manual_seed(0)
    reference, images = (
        torch.rand(40, 1, 4, 4, generator=generator),
        torch.rand(7, 1, 4, 4, generator=generator),
    )
    shared = shared_neighbours(reference, 3)
    assert shared_neighbours(reference.clone(), 3) is shared and shared_neighbours(reference, 4) is not shared
    fresh = TrainingNeighbours(reference, 3)(images)
    for scores in (shared(images), shared(images.clone())):
        assert all(torch.equal(scores[name], fresh[name]) for name in fresh)
    scores = shared(images)
    scores["pixel_knn"].zero_()  # a caller's change does not reach the kept scores
    assert torch.equal(shared(images)["pixel_knn"], fresh["pixel_knn"])

"""The OOD scores beyond raw likelihood, on models whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from src.evaluation.scoring import score_images
from src.models.vae import VariationalAutoencoder

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
    h = 2000^(-1/5)), so dose is
    -log N(x; 0, 1 + h^2) at x = 0 and 1; a statistic without spread is left out; the validation
    images are scored by the other fold's densities."""
    from src.evaluation.typicality import Typicality, dose_scores

    generator = torch.Generator().manual_seed(0)
    validation = {
        "kl": torch.randn(20000, generator=generator, dtype=torch.float64),
        "flat": torch.ones(20000),
    }
    fit = Typicality(validation, ["kl", "flat"])
    assert list(fit.densities) == ["kl"]
    dose = fit({"kl": torch.tensor([0.0, 1.0]), "flat": torch.tensor([1.0, 7.0])})
    variance = 1 + 2000 ** (-2 / 5)
    expected = [0.5 * math.log(2 * math.pi * variance) + x**2 / (2 * variance) for x in (0.0, 1.0)]
    assert dose.tolist() == pytest.approx(expected, abs=0.03)
    cross_fitted, others = dose_scores(
        validation, {"test": {"kl": torch.tensor([0.0]), "flat": torch.ones(1)}}
    )
    odd = Typicality({"kl": validation["kl"][1::2]}, ["kl"])
    assert cross_fitted[0::2].tolist() == pytest.approx(odd({"kl": validation["kl"][0::2]}).tolist())
    assert others["test"].tolist() == pytest.approx(fit({"kl": torch.tensor([0.0])}).tolist())

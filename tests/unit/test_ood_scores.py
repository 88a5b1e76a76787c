"""The OOD scores beyond raw likelihood, on models whose answer is known."""

from __future__ import annotations

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

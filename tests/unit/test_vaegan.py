"""The VAE-GAN's terms, update rule and discriminator on constructed inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

from src.models.losses import feature_error
from src.models.vaegan import (
    VAEGAN,
    Discriminator,
    discriminator_accuracy,
    diverged_terms,
    equilibrium_updates,
)

DENSE = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [8, 4], "activation": "relu"}


def _loader(count: int = 8) -> DataLoader:
    images = (torch.rand(count, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    return DataLoader(TensorDataset(images), batch_size=count)


def test_feature_error_is_half_the_squared_distance() -> None:
    features = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [3.0, 4.0, 0.0]])
    assert feature_error(features, target).tolist() == [4.0, 12.5]


def test_objectives_weigh_their_terms_as_configured() -> None:
    torch.manual_seed(0)
    weights = {"beta": 2.0, "gamma": 0.25, "feature_weight": 0.1, "pixel_weight": 3.0}
    model = VAEGAN(DENSE, [1, 4, 4], latent_dim=2, **weights)
    terms = model.adversarial_terms(next(iter(_loader()))[0])
    similarity = 0.1 * terms["feature_error"] + 3.0 * terms["pixel"]
    assert terms["feature_error"] > 0 and terms["pixel"] > 0 and terms["kl"] > 0
    torch.testing.assert_close(terms["loss"], 2.0 * terms["kl"] + similarity)
    torch.testing.assert_close(terms["decoder_loss"], 0.25 * similarity + terms["gan_decoder"])
    with pytest.raises(ValueError, match="model.feature_weight must be non-negative"):
        VAEGAN(DENSE, [1, 4, 4], latent_dim=2, feature_weight=-1.0)


def test_discriminator_accuracy_on_constructed_logits() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    assert discriminator_accuracy(logits, real=True).item() == 0.5
    assert discriminator_accuracy(torch.tensor([-2.0, -1.0, 0.5, -3.0]), real=False).item() == 0.75


@pytest.mark.parametrize(
    ("real", "fake", "expected"),
    [
        (0.69, 0.69, (True, True)),  # balanced: both learn
        (0.10, 0.69, (False, True)),  # discriminator too good on real images: it pauses
        (0.69, 0.20, (False, True)),  # ... or on fakes
        (1.20, 0.69, (True, False)),  # discriminator far behind: the decoder pauses
        (0.10, 1.20, (True, True)),  # both would pause: both train
    ],
)
def test_equilibrium_rule_skips_the_right_updates(real: float, fake: float, expected: tuple) -> None:
    assert equilibrium_updates(real, fake, equilibrium=0.68, margin=0.35) == expected
    assert equilibrium_updates(real, fake, equilibrium=None, margin=0.35) == (True, True)


def test_diverged_terms_names_nan_inf_and_too_large() -> None:
    terms = {"kl": torch.tensor(1.0), "disc_loss": torch.tensor(math.nan), "feature_error": torch.tensor(5e6)}
    assert set(diverged_terms(terms, max_loss=1e6)) == {"disc_loss", "feature_error"}
    assert diverged_terms({"kl": torch.tensor(-math.inf)}, 1e6).keys() == {"kl"}


def test_feature_layer_picks_the_activation() -> None:
    assert Discriminator(DENSE, [1, 4, 4], feature_layer=0)(torch.rand(3, 1, 4, 4))[0].shape == (3, 8)
    features, logits = Discriminator(DENSE, [1, 4, 4], feature_layer=-1)(torch.rand(3, 1, 4, 4))
    assert features.shape == (3, 4) and logits.shape == (3,)
    conv = {"_target_": "src.models.nets.ConvNet", "channels": [4, 6], "strides": [2, 2]}
    assert Discriminator(conv, [1, 8, 8], feature_layer=0)(torch.rand(2, 1, 8, 8))[0].shape == (2, 4 * 4 * 4)
    with pytest.raises(ValueError, match="model.feature_layer must index one of the discriminator's 2"):
        Discriminator(DENSE, [1, 4, 4], feature_layer=2)


def test_optimisers_share_model_optimizer_with_per_part_overrides(make_config) -> None:
    cfg = make_config("model=vaegan", "model.optimizer.lr=0.01", "model.optimizers.decoder.lr=0.003")
    from src.models.lightning_module import AutoencoderModule

    model = instantiate(cfg.model)
    encoder, decoder, discriminator = AutoencoderModule(model).configure_optimizers()
    assert [o.param_groups[0]["lr"] for o in (encoder, decoder, discriminator)] == [0.01, 0.003, 2e-4]
    assert discriminator.param_groups[0]["betas"] == (0.5, 0.999)
    assert {id(p) for p in encoder.param_groups[0]["params"]} == {id(p) for p in model.parts()["encoder"]}
    with pytest.raises(ValueError, match="model.optimizers may only name"):
        VAEGAN(DENSE, [1, 4, 4], optimizers={"generator": {}})

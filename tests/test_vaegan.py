"""The VAE-GAN: gradient routing, discriminator accuracy, the equilibrium rule, the divergence stop,
the feature layer, the per-step log, and the Table-1 measures."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from src.data import TorchvisionDataModule
from src.models import gray_fraction
from src.run import train
from src.table1 import digit_confidence, markdown, nearest_cosine, sharpness, train_digit_classifier
from src.vaegan import (
    VAEGAN,
    Discriminator,
    discriminator_accuracy,
    diverged_terms,
    equilibrium_updates,
    feature_error,
)
from tests.conftest import FAST, SHARED_DATASETS, needs_shared_mnist

DENSE = {"_target_": "src.nets.DenseNet", "hidden_dims": [8, 4], "activation": "relu"}
LINES = ["data.n_train=64", "data.n_val=16", "data.n_test=16"]


def _trainer(tmp_path: Path, *callbacks: Callback) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=str(tmp_path),
    )


def _loader(count: int = 8) -> DataLoader:
    images = (torch.rand(count, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    return DataLoader(TensorDataset(images), batch_size=count)


class _Grads(Callback):
    """Every part's gradients when the first optimiser steps (all backward passes are done then)."""

    def __init__(self) -> None:
        self.grads: dict[str, list[torch.Tensor | None]] | None = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: VAEGAN, optimizer) -> None:
        if self.grads is None:
            self.grads = {
                part: [None if p.grad is None else p.grad.clone() for p in params]
                for part, params in module.parts().items()
            }


def test_each_loss_reaches_only_its_part_and_the_encoder_gets_no_gan_gradient(tmp_path: Path) -> None:
    model = VAEGAN(DENSE, [1, 4, 4], latent_dim=2, gamma=0.5, pixel_weight=1.0, equilibrium=None)
    expected: dict[str, list[torch.Tensor]] = {}
    terms_of = model.adversarial_terms

    def recording(images: torch.Tensor) -> dict[str, torch.Tensor]:
        # The gradients each part should get, from the very graph the training step uses.
        terms = terms_of(images)
        parts = model.parts()
        for part, name in (("encoder", "loss"), ("decoder", "decoder_loss"), ("discriminator", "disc_loss")):
            expected[part] = list(torch.autograd.grad(terms[name], parts[part], retain_graph=True))
        gan = torch.autograd.grad(terms["gan_decoder"], parts["encoder"], retain_graph=True)
        expected["gan_on_encoder"] = list(gan)
        return terms

    model.adversarial_terms = recording
    grads = _Grads()
    _trainer(tmp_path, grads).fit(model, _loader())
    # The GAN term would move the encoder if it were let through; the step keeps it out.
    assert any(g.abs().sum() > 0 for g in expected["gan_on_encoder"])
    for part in ("encoder", "decoder", "discriminator"):
        for got, want in zip(grads.grads[part], expected[part], strict=True):
            assert got is not None and torch.allclose(got, want, atol=1e-6), part


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


def test_equilibrium_pauses_the_discriminator_in_training(tmp_path: Path) -> None:
    # margin 0 and an unreachable equilibrium: the discriminator is always "too far ahead".
    model = VAEGAN(DENSE, [1, 4, 4], latent_dim=2, equilibrium=100.0, margin=0.0)
    before = [p.clone() for p in model.parts()["discriminator"]]
    _trainer(tmp_path).fit(model, _loader())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parts()["discriminator"], strict=True))
    assert model.trainer.global_step == 2  # encoder and decoder stepped, the discriminator did not


def test_diverged_terms_names_nan_inf_and_too_large() -> None:
    terms = {"kl": torch.tensor(1.0), "disc_loss": torch.tensor(math.nan), "feature_error": torch.tensor(5e6)}
    assert set(diverged_terms(terms, max_loss=1e6)) == {"disc_loss", "feature_error"}
    assert diverged_terms({"kl": torch.tensor(-math.inf)}, 1e6).keys() == {"kl"}


def test_nan_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = VAEGAN(DENSE, [1, 4, 4], latent_dim=2)
    with torch.no_grad():
        model.discriminator.head.bias.fill_(math.nan)  # only the GAN terms turn NaN
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints")
    with pytest.raises(FloatingPointError) as error:
        _trainer(tmp_path, checkpoints).fit(model, _loader())
    message = str(error.value)
    saved = tmp_path / "checkpoints" / "last_good.ckpt"
    assert "diverged at step 0" in message and str(saved) in message
    assert "'disc_loss': nan" in message and "'gan_decoder': nan" in message
    assert "'kl'" not in message and "'feature_error'" not in message
    kept = torch.load(saved, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(kept[k].nan_to_num(), weights[k].nan_to_num()) for k in weights)


def test_feature_layer_picks_the_activation() -> None:
    assert Discriminator(DENSE, [1, 4, 4], feature_layer=0)(torch.rand(3, 1, 4, 4))[0].shape == (3, 8)
    features, logits = Discriminator(DENSE, [1, 4, 4], feature_layer=-1)(torch.rand(3, 1, 4, 4))
    assert features.shape == (3, 4) and logits.shape == (3,)
    conv = {"_target_": "src.nets.ConvNet", "channels": [4, 6], "strides": [2, 2]}
    assert Discriminator(conv, [1, 8, 8], feature_layer=0)(torch.rand(2, 1, 8, 8))[0].shape == (2, 4 * 4 * 4)
    with pytest.raises(ValueError, match="model.feature_layer must index one of the discriminator's 2"):
        Discriminator(DENSE, [1, 4, 4], feature_layer=2)


def test_optimisers_share_model_optimizer_with_per_part_overrides(make_config) -> None:
    cfg = make_config("model=vaegan", "model.optimizer.lr=0.01", "model.optimizers.decoder.lr=0.003")
    model = instantiate(cfg.model)
    encoder, decoder, discriminator = model.configure_optimizers()
    assert [o.param_groups[0]["lr"] for o in (encoder, decoder, discriminator)] == [0.01, 0.003, 2e-4]
    assert discriminator.param_groups[0]["betas"] == (0.5, 0.999)
    assert {id(p) for p in encoder.param_groups[0]["params"]} == {id(p) for p in model.parts()["encoder"]}
    with pytest.raises(ValueError, match="model.optimizers may only name"):
        VAEGAN(DENSE, [1, 4, 4], optimizers={"generator": {}})


def test_training_logs_every_term_per_step_and_the_ood_score(make_config, tmp_path: Path) -> None:
    cfg = make_config("model=vaegan", *FAST[:-1], "logger=csv", *LINES)
    metrics = train(cfg, tmp_path / "run")
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle)))
    for term in ("kl", "feature_error", "pixel", "gan_decoder", "disc_loss", "loss"):
        assert f"train/{term}_step" in columns, term
    for kind in ("real", "recon", "sampled"):
        assert f"train/disc_acc_{kind}_step" in columns
    assert metrics["test/disc_feature_error"] > 0 and "val/loss" in metrics
    assert (tmp_path / "run" / "samples.png").is_file()
    model = VAEGAN.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    scores = model.eval().evaluation_scores(torch.rand(5, 1, 32, 32))
    assert scores["disc_feature_error"].shape == (5,)


def test_sharpness_grey_pixels_and_nearest_cosine_on_known_images() -> None:
    flat = torch.full((1, 1, 4, 4), 0.5)
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1.0  # a vertical edge: |dx| = 1 in one of the 3 columns of differences
    assert sharpness(flat).item() == 0.0
    assert sharpness(edge).item() == pytest.approx(1 / 3)
    assert gray_fraction(flat).item() == 1.0 and gray_fraction(edge).item() == 0.0
    assert nearest_cosine(edge, torch.cat([flat, edge])).item() == pytest.approx(1.0)


@needs_shared_mnist
def test_digit_classifier_is_confident_on_digits_only() -> None:
    """The judge of 'samples look like digits': accurate on MNIST's test set, confident on its
    digits, and not on uniform noise or a blank image."""
    data = TorchvisionDataModule(root=str(SHARED_DATASETS), download=False)
    classifier = train_digit_classifier(data.images("train"), data.labels("train"))
    test_images = data.images("test")[:2000]
    with torch.no_grad():
        accuracy = (classifier(test_images).argmax(1) == data.labels("test")[:2000]).float().mean()
    assert accuracy > 0.93
    digits = digit_confidence(classifier, test_images).mean()
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert digits > 0.9 and digit_confidence(classifier, noise).mean() < digits - 0.2


def test_table_has_mean_and_spread_per_model() -> None:
    rows = [
        {"model": "VAE", "test/loss": 100.0, "test/cosine_similarity": 0.9, "sharpness": 0.1},
        {"model": "VAE", "test/loss": 102.0, "test/cosine_similarity": 0.92, "sharpness": 0.1},
        {"model": "VAE-GAN", "test/loss": 50.0, "test/cosine_similarity": 0.95, "sharpness": 0.2},
    ]
    table = markdown(rows)
    assert "| VAE | 2 | 101 ± 1.41 | 91 ± 1.41 |" in table
    assert "| VAE-GAN | 1 | 50 | 95 |" in table


def test_table1_experiment_has_report_004s_settings(make_config) -> None:
    cfg = make_config("experiment=table1_mnist", "model=vaegan")
    assert cfg.data.name == "mnist" and cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 50
    assert cfg.model.net._target_ == "src.nets.ConvNet" and cfg.model.optimizer._target_ == "torch.optim.Adam"
    assert dict(cfg.hydra.sweeper.params) == {"model": "vae,vaegan", "seed": "0,1,2"}

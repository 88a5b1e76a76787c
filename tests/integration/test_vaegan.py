"""The VAE-GAN trained for a few steps: gradients, equilibrium, divergence, logs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from src.models.lightning_module import AutoencoderModule
from src.models.vaegan import (
    VAEGAN,
)
from src.pipeline.checkpoints import load_model
from src.pipeline.run import Run
from src.pipeline.training import train
from tests.helpers import FAST

DENSE = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [8, 4], "activation": "relu"}


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
                for part, params in module.model.parts().items()
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
    _trainer(tmp_path, grads).fit(AutoencoderModule(model), _loader())
    # The GAN term would move the encoder if it were let through; the step keeps it out.
    assert any(g.abs().sum() > 0 for g in expected["gan_on_encoder"])
    for part in ("encoder", "decoder", "discriminator"):
        for got, want in zip(grads.grads[part], expected[part], strict=True):
            assert got is not None and torch.allclose(got, want, atol=1e-6), part


def test_equilibrium_pauses_the_discriminator_in_training(tmp_path: Path) -> None:
    # margin 0 and an unreachable equilibrium: the discriminator is always "too far ahead".
    model = VAEGAN(DENSE, [1, 4, 4], latent_dim=2, equilibrium=100.0, margin=0.0)
    before = [p.clone() for p in model.parts()["discriminator"]]
    module = AutoencoderModule(model)
    _trainer(tmp_path).fit(module, _loader())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parts()["discriminator"], strict=True))
    assert module.trainer.global_step == 2  # encoder and decoder stepped, the discriminator did not


def test_nan_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = VAEGAN(DENSE, [1, 4, 4], latent_dim=2)
    with torch.no_grad():
        model.discriminator.head.bias.fill_(math.nan)  # only the GAN terms turn NaN
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints")
    with pytest.raises(FloatingPointError) as error:
        _trainer(tmp_path, checkpoints).fit(AutoencoderModule(model), _loader())
    message = str(error.value)
    saved = tmp_path / "checkpoints" / "last_good.ckpt"
    assert "diverged at step 0" in message and str(saved) in message
    assert "'disc_loss': nan" in message and "'gan_decoder': nan" in message
    assert "'kl'" not in message and "'feature_error'" not in message
    kept = torch.load(saved, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(kept[f"model.{k}"].nan_to_num(), weights[k].nan_to_num()) for k in weights)


def test_training_logs_every_term_per_step_and_the_ood_score(make_config, tmp_path: Path) -> None:
    cfg = make_config("model=vaegan", *FAST[:-1], "logger=csv", *LINES)
    metrics = train(Run(cfg, tmp_path / "run"))
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle)))
    for term in ("kl", "feature_error", "pixel", "gan_decoder", "disc_loss", "loss"):
        assert f"train/{term}_step" in columns, term
    for kind in ("real", "recon", "sampled"):
        assert f"train/disc_acc_{kind}_step" in columns
    assert metrics["test/disc_feature_error"] > 0 and "val/loss" in metrics
    assert (tmp_path / "run" / "samples.png").is_file()
    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")[0]
    scores = model.eval().scores(torch.rand(5, 1, 32, 32))
    assert scores["disc_feature_error"].shape == (5,)

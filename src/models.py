"""Reconstruction models: one Lightning base for what CA and VAE share (net, decoding, evaluation
scores, optimiser, logging), and each model's bottleneck and loss in its own class."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.functional.regression import cosine_similarity

RECONSTRUCTIONS = ("mse", "bce")
REDUCTIONS = ("mean", "sum")
OUTPUT_ACTIVATIONS = ("sigmoid", "heaviside")
INITS = ("glorot_uniform", "torch")
# Keeps log() finite when an output is exactly 0 or 1 (the Heaviside output always is).
PROBABILITY_EPS = 1e-6


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"model.{key} must be one of {list(allowed)}, got {value!r}")
    return value


def _plain(config: Mapping | DictConfig) -> dict:
    """A plain dict of a (possibly Hydra) config, so checkpoints hold values, not config objects."""
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


def reconstruction_error(
    logits: torch.Tensor, images: torch.Tensor, kind: str, reduction: str
) -> torch.Tensor:
    """Per-image reconstruction term of the training loss: squared error of sigmoid(logits) or
    binary cross-entropy from logits, summed or averaged over the pixels of each image."""
    if kind == "mse":
        per_pixel = (torch.sigmoid(logits) - images).square()
    else:
        per_pixel = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    per_pixel = per_pixel.flatten(1)
    return per_pixel.sum(1) if reduction == "sum" else per_pixel.mean(1)


def gray_fraction(images: torch.Tensor) -> torch.Tensor:
    """Per-image fraction of pixels strictly between 0.1 and 0.9 (report 000's grey pixels): near 0
    for crisp black-and-white strokes, higher for blur or noise."""
    return ((images > 0.1) & (images < 0.9)).flatten(1).float().mean(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-image KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over latent dimensions."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)


class ReconstructionModel(pl.LightningModule):
    """Base of every autoencoder here. Subclasses define the bottleneck (`encode`, `code`) and
    `training_loss`; `evaluation_scores` gives the per-image numbers that become test metrics."""

    def __init__(
        self,
        net: Mapping,
        image_shape: list[int],
        latent_dim: int = 1,
        reconstruction: str = "mse",
        reduction: str = "mean",
        output_activation: str = "sigmoid",
        init: str = "glorot_uniform",
        optimizer: Mapping | None = None,
    ) -> None:
        super().__init__()
        net = _plain(net)
        optimizer = _plain(optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-3})
        image_shape = [int(size) for size in image_shape]
        _choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        _choice("reduction", reduction, REDUCTIONS)
        _choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        _choice("init", init, INITS)
        if latent_dim < 1:
            raise ValueError(f"model.latent_dim must be at least 1, got {latent_dim}")
        self.save_hyperparameters()
        self.image_shape = tuple(image_shape)
        self.net = instantiate(net, image_shape=image_shape, latent_dim=latent_dim)
        # The running sums of the training terms over the epoch so far (_log_training_terms).
        self._epoch_sums: torch.Tensor | None = None
        self._epoch_images = 0

    def _init_weights(self) -> None:
        """Keras' defaults (Glorot-uniform weights, zero biases) unless init=torch. Subclasses call it
        once all layers exist."""
        if self.hparams.init != "glorot_uniform":
            return
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    # --- the model -------------------------------------------------------------------------------
    def code(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic bottleneck value of each image (the VAE's posterior mean)."""
        raise NotImplementedError

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective minimised in training, and its named terms (batch means)."""
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixel logits for latent codes."""
        return self.net.decoder(latent)

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """The evaluation output activation: sigmoid, or report 000's Heaviside step."""
        if self.hparams.output_activation == "heaviside":
            return (logits > 0).to(logits.dtype)
        return torch.sigmoid(logits)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction in [0, 1] with the evaluation output activation."""
        return self.output(self.decode(self.code(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(images)

    def evaluation_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image scores (shape (N,)): the mean per-pixel squared error and binary cross-entropy
        of the reconstruction, the cosine between input and reconstruction vectors, and the blur:
        the fraction of output pixels strictly between 0.1 and 0.9 (report 000's gray pixels)."""
        recon = self.reconstruct(images)
        flat_recon, flat_images = recon.flatten(1), images.flatten(1)
        clamped = flat_recon.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        return {
            "recon_mse": (flat_recon - flat_images).square().mean(1),
            "recon_bce": F.binary_cross_entropy(clamped, flat_images, reduction="none").mean(1),
            "cosine_similarity": cosine_similarity(flat_recon, flat_images, reduction="none"),
            "blur": gray_fraction(recon),
        }

    def ood_scores(self, images: torch.Tensor, samples: int = 0) -> dict[str, torch.Tensor]:
        """Per-image anomaly scores (shape (N,)), higher = more anomalous: the reconstruction errors.
        Subclasses add their own (the VAE its likelihood bounds); `samples` is the number of latent
        draws for scores that sample, unused here."""
        scores = self.evaluation_scores(images)
        return {"recon_mse": scores["recon_mse"], "recon_bce": scores["recon_bce"]}

    # --- Lightning -------------------------------------------------------------------------------
    def _log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Validation and test terms through Lightning's epoch means. Training terms go to
        `_log_training_terms`."""
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_epoch=True,
                batch_size=batch_size,
                prog_bar=name == "loss",
                sync_dist=True,
            )

    def on_train_epoch_start(self) -> None:
        self._epoch_sums, self._epoch_images = None, 0

    def _log_training_terms(
        self, terms: dict[str, torch.Tensor | float], batch_size: int, batch_idx: int
    ) -> None:
        """`train/<name>_step` on the steps the loggers write (every trainer.log_every_n_steps) and
        `train/<name>_epoch`, the image-weighted epoch mean, at the epoch's last batch. The sums stay
        on the device, and step values go straight to the loggers: Lightning's self.log costs about
        half a millisecond a call, a tenth of a small model's step."""
        values = torch.stack(
            [torch.as_tensor(value, device=self.device).detach() for value in terms.values()]
        ).float()
        if self._epoch_sums is None:
            self._epoch_sums = values * batch_size
        else:
            self._epoch_sums.add_(values, alpha=batch_size)
        self._epoch_images += batch_size
        if self._is_log_step():
            # Lightning's own writer of step logs (an internal, stable since 1.x): the same rows,
            # steps and `epoch` column as self.log(on_step=True) gives.
            step_values = dict(zip(terms, values.tolist(), strict=True))
            self.trainer._logger_connector.log_metrics(
                {f"train/{name}_step": value for name, value in step_values.items()}
            )
            if self.trainer.progress_bar_callback is not None and "loss" in terms:
                loss = values[list(terms).index("loss")]
                self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        if self._is_last_batch(batch_idx):
            means = self._epoch_sums / self._epoch_images
            for name, value in zip(terms, means, strict=True):
                self.log(
                    f"train/{name}_epoch", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True
                )

    def _is_log_step(self) -> bool:
        """Whether the loggers write this training step (every trainer.log_every_n_steps): Lightning's
        own test (an internal, stable since 1.x), so logs and NaN checks agree with its step logs."""
        return self.trainer._logger_connector.should_update_logs

    def _is_last_batch(self, batch_idx: int) -> bool:
        return batch_idx + 1 >= self.trainer.num_training_batches

    def _should_check_loss(self, batch_idx: int) -> bool:
        """Whether this step checks its loss for NaN: always on a CPU, where the check is free; on an
        accelerator, where it is a host synchronisation, on the log steps (when Lightning syncs
        anyway) and at each epoch's last batch, before any checkpoint."""
        if self.device.type == "cpu" or self._trainer is None:
            return True
        return self._is_log_step() or self._is_last_batch(batch_idx)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images = batch[0]
        loss, terms = self.training_loss(images)
        if self._should_check_loss(batch_idx) and not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss of {type(self).__name__} became {loss.item()} at step {self.global_step} "
                f"(terms: { {k: float(v) for k, v in terms.items()} }). Lower model.optimizer.lr, or use "
                "model.reconstruction=bce; the checkpoints already in the run folder are kept."
            )
        self._log_training_terms({"loss": loss, **terms}, len(images), batch_idx)
        return loss

    def evaluation_metrics(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the training objective, its terms and the evaluation scores: what the
        validation and test stages report (as `val/<name>`, `test/<name>`)."""
        loss, terms = self.training_loss(images)
        scores = {name: value.mean() for name, value in self.evaluation_scores(images).items()}
        return {"loss": loss, **terms, **scores}

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._log_terms("val", self.evaluation_metrics(batch[0]), len(batch[0]))

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._log_terms("test", self.evaluation_metrics(batch[0]), len(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.hparams.optimizer, params=self.parameters())


class ClassicalAutoencoder(ReconstructionModel):
    """CA: a linear bottleneck on the encoder features; loss = the reconstruction term."""

    def __init__(self, net: Mapping, image_shape: list[int], latent_dim: int = 1, **kwargs: Any) -> None:
        super().__init__(net, image_shape, latent_dim, **kwargs)
        self.bottleneck = nn.Linear(self.net.feature_dim, latent_dim)
        self._init_weights()

    def code(self, images: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.net.encoder(images))

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.decode(self.code(images))
        recon = reconstruction_error(
            logits, images, self.hparams.reconstruction, self.hparams.reduction
        ).mean()
        return recon, {"recon": recon}


class VariationalAutoencoder(ReconstructionModel):
    """VAE: (mu, log-variance) heads on the encoder features, z = mu + sigma * eps in training;
    loss = reconstruction + beta * KL(q(z|x) || N(0, I)), both averaged over the batch."""

    def __init__(
        self, net: Mapping, image_shape: list[int], latent_dim: int = 1, beta: float = 1.0, **kwargs: Any
    ) -> None:
        if beta < 0:
            raise ValueError(f"model.beta must be non-negative, got {beta}")
        super().__init__(net, image_shape, latent_dim, **kwargs)
        self.mu = nn.Linear(self.net.feature_dim, latent_dim)
        self.logvar = nn.Linear(self.net.feature_dim, latent_dim)
        self._init_weights()

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.encoder(images)
        return self.mu(features), self.logvar(features)

    def code(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0]

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, logvar = self.encode(images)
        latent = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.decode(latent)
        recon = reconstruction_error(
            logits, images, self.hparams.reconstruction, self.hparams.reduction
        ).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return recon + self.hparams.beta * kl, {"recon": recon, "kl": kl}

    def evaluation_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adds the KL term and the negative ELBO in nats per image with a Bernoulli decoder and
        z = mu (no sampling): sum over pixels of BCE(sigmoid(logits), x) + KL."""
        scores = super().evaluation_scores(images)
        mu, logvar = self.encode(images)
        kl = gaussian_kl(mu, logvar)
        bernoulli_nll = reconstruction_error(self.decode(mu), images, "bce", "sum")
        return {**scores, "kl": kl, "neg_elbo": bernoulli_nll + kl}

    @torch.no_grad()
    def posterior_statistics(self, images: torch.Tensor) -> dict[str, float]:
        """Report 000's bottleneck statistics over a set: mean and spread of mu, the posterior sigma,
        and the active dimensions (Var over images of mu > 0.01, Burda et al. 2016; 0 means
        posterior collapse)."""
        mu, logvar = self.encode(images)
        sigma = (0.5 * logvar).exp()
        return {
            "mu_mean": mu.mean().item(),
            "mu_std": mu.std().item(),
            "sigma_mean": sigma.mean().item(),
            "sigma_min": sigma.min().item(),
            "sigma_max": sigma.max().item(),
            "active_dims": int((mu.var(0) > 0.01).sum()),
        }

    def importance_weighted_nll(
        self, images: torch.Tensor, samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image importance-weighted bound on -log p(x) in nats (Burda et al. 2016) with K =
        `samples` draws z_k ~ q(z|x) and a Bernoulli decoder:
        -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x). K = 1 is the sampled negative ELBO; the bound
        tightens towards -log p(x) as K grows, so it is a better likelihood than z = mu."""
        if samples < 1:
            raise ValueError(f"the number of samples must be at least 1, got {samples}")
        mu, logvar = self.encode(images)
        std = (0.5 * logvar).exp()
        eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        latent = mu + eps * std  # (K, N, latent)
        logits = self.decode(latent.flatten(0, 1))
        repeated = images.expand(samples, *images.shape).flatten(0, 1)
        log_px_z = -reconstruction_error(logits, repeated, "bce", "sum").view(samples, -1)
        # The 0.5 * log(2 pi) terms of the prior and the posterior cancel.
        log_pz = -0.5 * latent.square().sum(-1)
        log_qz_x = -0.5 * (eps.square() + logvar).sum(-1)
        log_weights = log_px_z + log_pz - log_qz_x
        return -(torch.logsumexp(log_weights, dim=0) - math.log(samples))

    def ood_scores(self, images: torch.Tensor, samples: int = 0) -> dict[str, torch.Tensor]:
        """Adds the KL term, the negative ELBO with z = mu, and its importance-weighted K-sample
        version `neg_elbo_iw` (K = `samples`; none when 0), all in nats per image."""
        scores = self.evaluation_scores(images)
        names = ("recon_mse", "recon_bce", "kl", "neg_elbo")
        # samples=0 skips the bound: it costs K decoder passes per image.
        bound = {"neg_elbo_iw": self.importance_weighted_nll(images, samples)} if samples else {}
        return {**{name: scores[name] for name in names}, **bound}

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images decoded from z ~ N(0, I), with the evaluation output activation."""
        latent = torch.randn(count, self.hparams.latent_dim, generator=generator).to(self.device)
        return self.output(self.decode(latent))

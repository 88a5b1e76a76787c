"""The variational autoencoder (VAE): (mu, log-variance) heads on the encoder features,
z = mu + sigma * eps in training; loss = reconstruction + beta * KL(q(z|x) || N(0, I)), both
averaged over the batch. With `kl_warmup_steps` the KL weight of the training steps rises linearly
from 0 to beta over that many steps (Bowman et al. 2016); validation and test use beta. Evaluation
uses z = mu."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from src.errors import ConfigValueError
from src.models.base import EvaluationPass, ReconstructionModel
from src.models.losses import gaussian_kl, reparameterise


class VariationalAutoencoder(ReconstructionModel):
    anomaly_scores: ClassVar[tuple[str, ...]] = (
        "recon_mse",
        "recon_bce",
        "kl",
        "neg_elbo",
        "neg_elbo_iw",
        "likelihood_regret",
    )
    # Scores built on the decoder's pixel likelihood: none for a decoder without one.
    likelihood_scores: ClassVar[tuple[str, ...]] = ("neg_elbo", "neg_elbo_iw", "likelihood_regret")
    generative: ClassVar[bool] = True

    def __init__(
        self,
        net: Mapping,
        image_shape: list[int],
        latent_dim: int = 1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        if beta < 0:
            raise ConfigValueError(f"model.beta must be non-negative, got {beta}")
        if kl_warmup_steps < 0:
            raise ConfigValueError(f"model.kl_warmup_steps must be non-negative, got {kl_warmup_steps}")
        super().__init__(net, image_shape, latent_dim, **kwargs)
        self.hparams.update(beta=beta, kl_warmup_steps=kl_warmup_steps)
        if not self.has_pixel_likelihood:
            self.anomaly_scores = tuple(
                name for name in self.anomaly_scores if name not in self.likelihood_scores
            )
        self.mu = nn.Linear(self.net.feature_dim, latent_dim)
        self.logvar = nn.Linear(self.net.feature_dim, latent_dim)
        self._init_weights()

    def code_layer(self) -> nn.Module:
        return self.mu

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.encoder(self.standardized(images))
        return self.mu(features), self.logvar(features)

    def encode_pass(self, images: torch.Tensor) -> EvaluationPass:
        mu, logvar = self.encode(images)
        return EvaluationPass(mu, self.decode(mu), logvar)

    def noise_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.hparams.latent_dim)

    def training_loss(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, logvar = self.encode(images)
        logits = self.decode(reparameterise(mu, logvar, noise))
        recon = self.reconstruction_error(logits, images).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return recon + self.kl_weight(step) * kl, {"recon": recon, "kl": kl}

    def kl_weight(self, step: int | None = None) -> float:
        """beta, or during the warm-up's training steps (`step` given, in training mode) beta * step
        / kl_warmup_steps."""
        warmup = self.hparams.kl_warmup_steps
        if not (warmup and self.training and step is not None):
            return self.hparams.beta
        return self.hparams.beta * min(1.0, step / warmup)

    def extra_scores(
        self, images: torch.Tensor, evaluated: EvaluationPass, samples: int
    ) -> dict[str, torch.Tensor]:
        """The KL term and, with a pixel likelihood (`has_pixel_likelihood`), the negative ELBO in
        nats per image with z = mu (no sampling): `pixel_nll` (Bernoulli, or the discretised
        logistic) + KL; with `samples` > 0 also `neg_elbo_iw`, its importance-weighted K-sample
        bound (K = `samples`)."""
        kl = gaussian_kl(evaluated.code, evaluated.logvar)
        if not self.has_pixel_likelihood:
            return {"kl": kl}
        scores = {"kl": kl, "neg_elbo": self.pixel_nll(evaluated.logits, images) + kl}
        if samples:  # it costs K decoder passes per image
            scores["neg_elbo_iw"] = self.importance_weighted_nll(images, samples)
        return scores

    def latent_statistics(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Report 000's bottleneck statistics over a set: mean and spread of mu, the posterior sigma,
        and the active dimensions (Var over images of mu > 0.01, Burda et al. 2016; 0 means
        posterior collapse)."""
        mu, logvar = self.encode(images)
        sigma = (0.5 * logvar).exp()
        return {
            "mu_mean": mu.mean(),
            "mu_std": mu.std(),
            "sigma_mean": sigma.mean(),
            "sigma_min": sigma.min(),
            "sigma_max": sigma.max(),
            "active_dims": (mu.var(0) > 0.01).sum(),
        }

    def importance_weighted_nll(
        self, images: torch.Tensor, samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image importance-weighted bound on -log p(x) in nats (Burda et al. 2016) with K =
        `samples` draws z_k ~ q(z|x) and the decoder's pixel likelihood (`pixel_nll`):
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
        log_px_z = -self.pixel_nll(logits, repeated).view(samples, -1)
        # The 0.5 * log(2 pi) terms of the prior and the posterior cancel.
        log_pz = -0.5 * latent.square().sum(-1)
        log_qz_x = -0.5 * (eps.square() + logvar).sum(-1)
        log_weights = log_px_z + log_pz - log_qz_x
        return -(torch.logsumexp(log_weights, dim=0) - math.log(samples))

    def likelihood_regret(
        self, images: torch.Tensor, steps: int, samples: int = 4, lr: float = 0.1, seed: int = 0
    ) -> torch.Tensor:
        """Per-image likelihood regret (Xiao et al. 2020) in nats: how much the negative ELBO of an
        image falls when its posterior is fitted to that image alone instead of taken from the
        encoder. The posterior's mean and log-variance are optimised directly (Adam, `steps` steps,
        learning rate `lr`), starting from the encoder's, on a sampled ELBO with `samples` fixed
        draws per image (the same draws throughout, so the objective is deterministic); the best
        value reached counts, so the regret is never negative. It costs `steps` x `samples` decoder
        passes and their gradients."""
        generator = torch.Generator(images.device).manual_seed(seed)
        with torch.no_grad():
            mu, logvar = self.encode(images)
        # The same draws for every image (broadcast over the batch): an image's regret does not
        # depend on the batch it is scored in.
        eps = torch.randn((samples, 1, mu.shape[1]), generator=generator, device=mu.device, dtype=mu.dtype)
        repeated = images.expand(samples, *images.shape).flatten(0, 1)

        def objective(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
            latent = (mu + eps * (0.5 * logvar).exp()).flatten(0, 1)
            nll = self.pixel_nll(self.decode(latent), repeated).view(samples, -1).mean(0)
            return nll + gaussian_kl(mu, logvar)

        with torch.enable_grad():
            fitted_mu = mu.clone().requires_grad_(True)
            fitted_logvar = logvar.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([fitted_mu, fitted_logvar], lr=lr)
            start = None
            for _ in range(steps):
                values = objective(fitted_mu, fitted_logvar)
                if start is None:
                    start = best = values.detach()
                # The images are independent (each gets its own gradient); the weights get none.
                fitted_mu.grad, fitted_logvar.grad = torch.autograd.grad(
                    values.sum(), [fitted_mu, fitted_logvar]
                )
                optimizer.step()
                best = torch.minimum(best, values.detach())
            final = objective(fitted_mu, fitted_logvar).detach()
        if start is None:  # no steps: nothing refitted
            return torch.zeros_like(final)
        return start - torch.minimum(best, final)

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images decoded from z ~ N(0, I), with the evaluation output activation."""
        latent = torch.randn(count, self.hparams.latent_dim, generator=generator).to(self.device)
        return self.output(self.decode(latent))

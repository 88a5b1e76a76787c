"""Loss terms and per-image measures shared by the models: reconstruction error, the Gaussian KL,
the reparameterisation, the discriminator-feature error and the grey-pixel fraction."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

RECONSTRUCTIONS = ("mse", "bce", "discretized_logistic")
# 8-bit pixels in [0, 1]: the width of one intensity bin.
BIN = 1 / 255
REDUCTIONS = ("mean", "sum")


def reconstruction_error(
    logits: torch.Tensor,
    images: torch.Tensor,
    kind: str,
    reduction: str,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image reconstruction term of the training loss: squared error of activation(logits)
    (the sigmoid unless the model says otherwise), binary cross-entropy from logits, or the
    negative log-likelihood of 8-bit pixels under a discretised logistic with mean
    activation(logits) and log-scale `log_scale`; summed or averaged over the pixels of each image."""
    if kind == "mse":
        per_pixel = (activation(logits) - images).square()
    elif kind == "discretized_logistic":
        per_pixel = discretized_logistic_nll(activation(logits), log_scale, images)
    else:
        per_pixel = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    per_pixel = per_pixel.flatten(1)
    return per_pixel.sum(1) if reduction == "sum" else per_pixel.mean(1)


def discretized_logistic_nll(
    mean: torch.Tensor, log_scale: torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """Per-pixel -log P(x) of 8-bit pixels x in [0, 1] (multiples of 1/255) under a logistic of
    `mean` and scale exp(`log_scale`) discretised to the 256 intensity bins (Salimans et al. 2017,
    PixelCNN++): the probability mass of x's bin, the two end bins taking the tails. A proper
    likelihood of the data, unlike a Bernoulli on grey values."""
    centred = images - mean
    inverse_scale = torch.exp(-log_scale)
    upper, lower = inverse_scale * (centred + BIN / 2), inverse_scale * (centred - BIN / 2)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper): the bin at 0 takes the left tail
    log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)): the bin at 1 takes the right one
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    # Where the mass underflows, the density at the bin's centre times its width.
    middle = inverse_scale * centred
    log_density = middle - log_scale - 2 * F.softplus(middle) + math.log(BIN)
    log_mass = torch.where(mass > 1e-5, torch.log(mass.clamp_min(1e-12)), log_density)
    log_p = torch.where(
        images < BIN / 2, log_cdf_upper, torch.where(images > 1 - BIN / 2, log_survival_lower, log_mass)
    )
    return -log_p


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-image KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over latent dimensions."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) (`noise`, drawn here when None): a sample of q(z|x)
    that gradients flow through."""
    eps = torch.randn_like(mu) if noise is None else noise
    return mu + eps * (0.5 * logvar).exp()


def feature_error(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image -log N(Dis_l(x) | Dis_l(x~), I) up to a constant: half the squared distance of the
    flattened discriminator features (Larsen et al.'s L_llike^Dis_l)."""
    return 0.5 * (features - target).flatten(1).square().sum(1)


def gray_fraction(images: torch.Tensor) -> torch.Tensor:
    """Per-image fraction of pixels strictly between 0.1 and 0.9 (report 000's grey pixels): near 0
    for crisp black-and-white strokes, higher for blur or noise."""
    return ((images > 0.1) & (images < 0.9)).flatten(1).float().mean(1)

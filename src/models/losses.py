"""Loss terms and per-image measures shared by the models: reconstruction error, the Gaussian KL,
the reparameterisation, the discriminator-feature error and the grey-pixel fraction."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

RECONSTRUCTIONS = ("mse", "bce")
REDUCTIONS = ("mean", "sum")


def reconstruction_error(
    logits: torch.Tensor,
    images: torch.Tensor,
    kind: str,
    reduction: str,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
) -> torch.Tensor:
    """Per-image reconstruction term of the training loss: squared error of activation(logits)
    (the sigmoid unless the model says otherwise) or binary cross-entropy from logits, summed or
    averaged over the pixels of each image."""
    if kind == "mse":
        per_pixel = (activation(logits) - images).square()
    else:
        per_pixel = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    per_pixel = per_pixel.flatten(1)
    return per_pixel.sum(1) if reduction == "sum" else per_pixel.mean(1)


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

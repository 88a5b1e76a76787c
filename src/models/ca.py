"""The classical autoencoder (CA): a linear bottleneck on the encoder features; loss = the
reconstruction term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from src.models.base import ReconstructionModel


class ClassicalAutoencoder(ReconstructionModel):
    def __init__(self, net: Mapping, image_shape: list[int], latent_dim: int = 1, **kwargs: Any) -> None:
        super().__init__(net, image_shape, latent_dim, **kwargs)
        self.bottleneck = nn.Linear(self.net.feature_dim, latent_dim)
        self._init_weights()

    def code_layer(self) -> nn.Module:
        return self.bottleneck

    def training_loss(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.decode(self.code(images))
        recon = self.reconstruction_error(logits, images).mean()
        return recon, {"recon": recon}

"""The VAE-GAN of Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric":
a VAE whose decoder is also a GAN generator, with the reconstruction error measured in the feature
space of the GAN's discriminator (Dis_l) instead of (or beside) pixel space.

Three parts, three optimisers (src/models/lightning_module.py trains a model of several parts with
Lightning's manual optimisation), one forward pass per batch:
- encoder:       KL + feature error (+ pixel term)
- decoder:       gamma * (feature error (+ pixel term)) + GAN loss on reconstructions and prior samples
- discriminator: GAN loss (real vs reconstructed and sampled)
Each loss is back-propagated into its own part's parameters only, so the encoder never receives the
GAN gradient and the discriminator is not trained to make reconstructions look alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import ConfigValueError
from src.models.base import EvaluationPass, plain
from src.models.losses import feature_error, gaussian_kl, reparameterise
from src.models.nets import ACTIVATIONS, build_net
from src.models.vae import VariationalAutoencoder

PARTS = ("encoder", "decoder", "discriminator")


def discriminator_accuracy(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Fraction of images the discriminator labels correctly (logit > 0 means 'real')."""
    return ((logits > 0) == real).float().mean()


def equilibrium_updates(
    real_bce: float, fake_bce: float, equilibrium: float | None, margin: float
) -> tuple[bool, bool]:
    """(update discriminator, update decoder) by the rule of the authors' code: the discriminator
    pauses while it is too far ahead (a BCE below equilibrium - margin), the decoder while the
    discriminator is too far behind (a BCE above equilibrium + margin); if both would pause, both
    train. equilibrium=None always updates both."""
    if equilibrium is None:
        return True, True
    train_discriminator = min(real_bce, fake_bce) >= equilibrium - margin
    train_decoder = max(real_bce, fake_bce) <= equilibrium + margin
    if not (train_discriminator or train_decoder):
        return True, True
    return train_discriminator, train_decoder


def diverged_terms(terms: Mapping[str, torch.Tensor], max_loss: float) -> dict[str, float]:
    """The loss terms that are NaN, infinite or larger in magnitude than max_loss."""
    values = {name: float(value.detach()) for name, value in terms.items()}
    return {
        name: value
        for name, value in values.items()
        if not torch.isfinite(torch.tensor(value)) or abs(value) > max_loss
    }


class Discriminator(nn.Module):
    """The encoder body of a net config (dense or conv, built by the same class as the model's) with
    a logit head. `feature_layer` picks the activation whose output is Dis_l: an index into the
    body's activation layers (Python-style, -1 is the last)."""

    def __init__(self, net: Mapping, image_shape: Sequence[int], feature_layer: int = -1) -> None:
        super().__init__()
        body = build_net(net, image_shape, latent_dim=1)
        layers = list(body.encoder)
        activations = [i for i, layer in enumerate(layers) if isinstance(layer, tuple(ACTIVATIONS.values()))]
        if not -len(activations) <= feature_layer < len(activations):
            raise ConfigValueError(
                f"model.feature_layer must index one of the discriminator's {len(activations)} activation "
                f"layers (0..{len(activations) - 1}, or negative from the end), got {feature_layer}"
            )
        cut = activations[feature_layer] + 1
        self.lower = nn.Sequential(*layers[:cut])
        self.upper = nn.Sequential(*layers[cut:])
        self.head = nn.Linear(body.feature_dim, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Dis_l features flattened per image, real-vs-fake logit per image)."""
        hidden = self.lower(images)
        return hidden.flatten(1), self.head(self.upper(hidden)).squeeze(1)


class VAEGAN(VariationalAutoencoder):
    """VAE-GAN: the VAE's encoder, heads, decoder, sampling and evaluation, plus a discriminator and
    Larsen et al.'s three-part training (see the module docstring). `loss` (logged, monitored as
    val/loss) is the encoder's objective: beta * KL + feature_weight * feature error + pixel_weight *
    pixel term."""

    anomaly_scores: ClassVar[tuple[str, ...]] = (*VariationalAutoencoder.anomaly_scores, "disc_feature_error")

    def __init__(
        self,
        net: Mapping,
        image_shape: list[int],
        latent_dim: int = 1,
        beta: float = 1.0,
        discriminator_net: Mapping | None = None,
        feature_layer: int = -1,
        gamma: float = 1.0,
        feature_weight: float = 1.0,
        pixel_weight: float = 0.0,
        optimizers: Mapping | None = None,
        equilibrium: float | None = None,
        margin: float = 0.35,
        max_loss: float = 1.0e6,
        **kwargs: Any,
    ) -> None:
        # Plain values: the checkpoints record them.
        discriminator_net = plain(discriminator_net) if discriminator_net else None
        optimizers = {part: plain(value or {}) for part, value in (optimizers or {}).items()}
        if unknown := set(optimizers) - set(PARTS):
            raise ConfigValueError(f"model.optimizers may only name {list(PARTS)}, got {sorted(unknown)}")
        weights = {"gamma": gamma, "feature_weight": feature_weight, "pixel_weight": pixel_weight}
        for key, value in {**weights, "margin": margin}.items():
            if value < 0:
                raise ConfigValueError(f"model.{key} must be non-negative, got {value}")
        if kwargs.get("reconstruction") == "discretized_logistic":
            raise ConfigValueError(
                "model.reconstruction=discretized_logistic is a VAE option (the VAE-GAN's optimisers do not "
                "train a pixel scale): use model.reconstruction=bce or mse"
            )
        if kwargs.get("kl_warmup_steps"):
            raise ConfigValueError(
                "model.kl_warmup_steps is a VAE option (the VAE-GAN trains with beta throughout): "
                "set model.kl_warmup_steps=0"
            )
        super().__init__(net, image_shape, latent_dim, beta, **kwargs)
        self.hparams.update(
            discriminator_net=discriminator_net,
            feature_layer=feature_layer,
            gamma=gamma,
            feature_weight=feature_weight,
            pixel_weight=pixel_weight,
            optimizers=optimizers,
            equilibrium=equilibrium,
            margin=margin,
            max_loss=max_loss,
        )
        self.discriminator = Discriminator(discriminator_net or self.hparams.net, image_shape, feature_layer)
        self._init_weights()  # again, now that the discriminator exists (the same seed, the same weights)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """The parameters each optimiser updates (three parts, three optimisers)."""
        encoder = [*self.net.encoder.parameters(), *self.mu.parameters(), *self.logvar.parameters()]
        return {
            "encoder": encoder,
            "decoder": list(self.net.decoder.parameters()),
            "discriminator": list(self.discriminator.parameters()),
        }

    # --- losses ----------------------------------------------------------------------------------
    def adversarial_terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss term of one batch (batch means) and the discriminator's accuracies."""
        count = len(images)
        mu, logvar = self.encode(images)
        latent = reparameterise(mu, logvar)
        # Reconstructions and prior samples in one decoder pass (one set of batch-norm statistics).
        logits = self.decode(torch.cat([latent, torch.randn_like(latent)]))
        features, verdicts = self.discriminator(torch.cat([images, self.pixels(logits)]))
        real_features, recon_features = features[:count].detach(), features[count : 2 * count]
        real, recon, sampled = verdicts.split(count)

        kl = gaussian_kl(mu, logvar).mean()
        feature = feature_error(recon_features, real_features).mean()
        pixel = self.reconstruction_error(logits[:count], images).mean()
        similarity = self.hparams.feature_weight * feature + self.hparams.pixel_weight * pixel
        ones, zeros = torch.ones_like(real), torch.zeros_like(real)
        bce = F.binary_cross_entropy_with_logits
        disc_real = bce(real, ones)
        disc_fake = 0.5 * (bce(recon, zeros) + bce(sampled, zeros))
        # Non-saturating generator loss: the decoder maximises log D on both kinds of fakes.
        gan_decoder = bce(recon, ones) + bce(sampled, ones)
        return {
            "loss": self.hparams.beta * kl + similarity,
            "kl": kl,
            "feature_error": feature,
            "pixel": pixel,
            "gan_decoder": gan_decoder,
            "decoder_loss": self.hparams.gamma * similarity + gan_decoder,
            "disc_real": disc_real,
            "disc_fake": disc_fake,
            "disc_loss": disc_real + 2 * disc_fake,
            "disc_acc_real": discriminator_accuracy(real, True),
            "disc_acc_recon": discriminator_accuracy(recon, False),
            "disc_acc_sampled": discriminator_accuracy(sampled, False),
        }

    def training_loss(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The encoder objective, with every other term beside it (`adversarial_terms`). It draws
        its own noise (it is never trained batched, so `noise_shape` stays None)."""
        terms = self.adversarial_terms(images)
        return terms.pop("loss"), terms

    # --- training (src/models/lightning_module.py) ----------------------------------------------
    def part_objectives(self, terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each part's loss, in the order they are back-propagated (each into its own part only:
        the GAN term never reaches the encoder)."""
        return {
            "discriminator": terms["disc_loss"],
            "decoder": terms["decoder_loss"],
            "encoder": terms["loss"],
        }

    def part_updates(self, terms: Mapping[str, torch.Tensor]) -> dict[str, bool]:
        """Which parts step after this batch: the encoder always, the decoder and the discriminator
        by the equilibrium rule (`equilibrium_updates`)."""
        hparams = self.hparams
        train_discriminator, train_decoder = equilibrium_updates(
            terms["disc_real"].item(), terms["disc_fake"].item(), hparams.equilibrium, hparams.margin
        )
        return {"encoder": True, "decoder": train_decoder, "discriminator": train_discriminator}

    def divergence(self, terms: Mapping[str, torch.Tensor]) -> str | None:
        """What diverged among the loss terms (NaN, infinite or above model.max_loss), or None."""
        losses = {name: value for name, value in terms.items() if not name.startswith("disc_acc")}
        if bad := diverged_terms(losses, self.hparams.max_loss):
            return f"loss terms {bad} (NaN, infinite or above model.max_loss={self.hparams.max_loss:g})"
        return None

    def optimizer_settings(self, part: str) -> dict[str, Any]:
        """model.optimizer, updated by model.optimizers.<part>."""
        return {**self.hparams.optimizer, **self.hparams.optimizers.get(part, {})}

    # --- evaluation ------------------------------------------------------------------------------
    def extra_scores(
        self, images: torch.Tensor, evaluated: EvaluationPass, samples: int
    ) -> dict[str, torch.Tensor]:
        """Adds `disc_feature_error`: the feature error between an image and its deterministic
        (z = mu) reconstruction, per image, an OOD score."""
        features, _ = self.discriminator(images)
        recon_features, _ = self.discriminator(self.pixels(evaluated.logits))
        scores = super().extra_scores(images, evaluated, samples)
        return {**scores, "disc_feature_error": feature_error(recon_features, features)}

"""The base of every autoencoder here, a plain `nn.Module`: the net, decoding, the evaluation pass
and its per-image scores. Each model (ca.py, vae.py, vaegan.py) adds its bottleneck and its loss;
src/models/lightning_module.py trains any of them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.functional.regression import cosine_similarity

from src.errors import ConfigValueError
from src.models.losses import RECONSTRUCTIONS, REDUCTIONS, gray_fraction, reconstruction_error
from src.models.nets import build_net

OUTPUT_ACTIVATIONS = ("sigmoid", "heaviside")
FINAL_ACTIVATIONS = ("sigmoid", "leaky_relu")
INITS = ("glorot_uniform", "torch")
# Keeps log() finite when an output is exactly 0 or 1 (the Heaviside output always is).
PROBABILITY_EPS = 1e-6


def choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`, else a ValueError naming the config key `model.<key>`."""
    if value not in allowed:
        raise ConfigValueError(f"model.{key} must be one of {list(allowed)}, got {value!r}")
    return value


def plain(config: Mapping | DictConfig) -> dict:
    """A plain dict of a (possibly Hydra) config, so checkpoints hold values, not config objects."""
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


class Settings(dict):
    """A model's constructor arguments (`model.hparams`), read as attributes: what its checkpoints
    record beside the weights."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class EvaluationPass:
    """One deterministic pass of images through a model: everything its scores, figures and
    evaluations need, computed once. `code` is the bottleneck value (the VAE's posterior mean),
    `logits` the decoder's output for it, `logvar` the VAE's posterior log-variance."""

    code: torch.Tensor
    logits: torch.Tensor
    logvar: torch.Tensor | None = None

    @property
    def sigma(self) -> torch.Tensor | None:
        return None if self.logvar is None else (0.5 * self.logvar).exp()


class ReconstructionModel(nn.Module):
    """Base of every autoencoder. Subclasses define the bottleneck (`code_layer`, `encode_pass`)
    and `training_loss`; `scores` gives every per-image number, which become the test metrics
    (means) and the anomaly scores (those named in `anomaly_scores`). `optimizer` is the training
    recipe the model is trained with (src/models/lightning_module.py), kept with its settings."""

    # Scores in which higher means more anomalous: the candidates for OOD detection.
    anomaly_scores: ClassVar[tuple[str, ...]] = ("recon_mse", "recon_bce")
    # Whether the model has a prior to sample images from (`sample`).
    generative: ClassVar[bool] = False

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
        final_activation: str = "sigmoid",
        final_negative_slope: float = 0.3,
        pixel_mean: float | None = None,
        pixel_std: float | None = None,
        standardize_inputs: bool = False,
    ) -> None:
        super().__init__()
        net = plain(net)
        optimizer = plain(optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-3, "fused": True})
        image_shape = [int(size) for size in image_shape]
        choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        choice("reduction", reduction, REDUCTIONS)
        choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        choice("init", init, INITS)
        choice("final_activation", final_activation, FINAL_ACTIVATIONS)
        if final_activation != "sigmoid" and reconstruction != "mse":
            raise ConfigValueError(
                f"model.final_activation={final_activation} gives no probabilities for bce: use "
                "model.reconstruction=mse with it, or model.final_activation=sigmoid"
            )
        if final_activation != "sigmoid" and output_activation == "heaviside":
            raise ConfigValueError(
                "model.output_activation=heaviside swaps a sigmoid: keep model.final_activation=sigmoid"
            )
        if standardize_inputs:
            if pixel_mean is None or pixel_std is None or pixel_std <= 0:
                raise ConfigValueError(
                    "model.standardize_inputs=true needs model.pixel_mean and a positive model.pixel_std "
                    "(conf/tuning/<data>.yaml gives them for MNIST and Fashion-MNIST)"
                )
            if final_activation == "sigmoid":
                raise ConfigValueError(
                    "model.standardize_inputs=true: standardised pixels leave [0, 1], which a sigmoid cannot "
                    "reach; set model.final_activation=leaky_relu (and model.reconstruction=mse)"
                )
        if latent_dim < 1:
            raise ConfigValueError(f"model.latent_dim must be at least 1, got {latent_dim}")
        self.hparams = Settings(
            net=net,
            image_shape=image_shape,
            latent_dim=latent_dim,
            reconstruction=reconstruction,
            reduction=reduction,
            output_activation=output_activation,
            init=init,
            optimizer=optimizer,
            final_activation=final_activation,
            final_negative_slope=final_negative_slope,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            standardize_inputs=standardize_inputs,
        )
        self.image_shape = tuple(image_shape)
        self.net = build_net(net, image_shape, latent_dim)
        if reconstruction == "discretized_logistic":
            # The decoder's per-pixel log-scale, learnt with the weights (scale 0.05 at the start).
            self.log_scale = nn.Parameter(torch.full(image_shape, math.log(0.05)))

    def _init_weights(self) -> None:
        """Keras' defaults (Glorot-uniform weights, zero biases) unless init=torch. Subclasses call it
        once all layers exist."""
        if self.hparams.init != "glorot_uniform":
            return
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- the model -------------------------------------------------------------------------------
    def code_layer(self) -> nn.Module:
        """The layer on the encoder features that gives the deterministic bottleneck value."""
        raise NotImplementedError

    def training_loss(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective minimised in training, and its named terms (batch means). A model that
        samples takes its standard normal `noise` (shape `noise_shape`) as given, or draws it;
        `step` is the training step (None outside training), for a loss whose weights follow a
        schedule."""
        raise NotImplementedError

    # --- how it is trained (src/models/lightning_module.py) --------------------------------------
    def parts(self) -> dict[str, list[nn.Parameter]]:
        """The parameters each optimiser updates: one part, every parameter, minimising
        `training_loss`. A model of several parts (the VAE-GAN) trains each with its own optimiser
        (`part_objectives`, `part_updates`)."""
        return {"model": list(self.parameters())}

    def optimizer_settings(self, part: str) -> dict[str, Any]:
        """The optimiser of a part (a Hydra config: `_target_` and its arguments)."""
        return dict(self.hparams.optimizer)

    def noise_shape(self, batch_size: int) -> tuple[int, ...] | None:
        """The shape of the noise `training_loss` draws for a batch (None: it draws none). Members
        trained together draw it from their own generators and pass it in."""
        return None

    def encode_pass(self, images: torch.Tensor) -> EvaluationPass:
        """The deterministic pass: bottleneck value and the decoder's logits for it."""
        code = self.code(images)
        return EvaluationPass(code, self.decode(code))

    def code(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic bottleneck value of each image (the VAE's posterior mean)."""
        return self.code_layer()(self.net.encoder(self.standardized(images)))

    @property
    def has_pixel_likelihood(self) -> bool:
        """Whether the decoder gives a likelihood of the pixels (`pixel_nll`): a sigmoid output in
        pixel space (no standardisation), read as Bernoulli means or as discretised-logistic means."""
        return self.hparams.final_activation == "sigmoid" and not self.hparams.standardize_inputs

    def pixel_nll(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Per-image -log p(x | z) in nats summed over pixels: the discretised logistic of 8-bit
        pixels when the model trains with it, else the Bernoulli of the sigmoid output."""
        if self.hparams.reconstruction == "discretized_logistic":
            # A likelihood of 8-bit images: other inputs (e.g. with added noise) are first quantised.
            pixels = (images * 255).round() / 255
            return reconstruction_error(
                logits, pixels, "discretized_logistic", "sum", log_scale=self.log_scale
            )
        return reconstruction_error(logits, images, "bce", "sum")

    def standardized(self, images: torch.Tensor) -> torch.Tensor:
        """The images as the net sees them: (x - pixel_mean) / pixel_std with `standardize_inputs`
        (report 004's "normalized, centred and scaled" inputs), else as they are."""
        if not self.hparams.standardize_inputs:
            return images
        return (images - self.hparams.pixel_mean) / self.hparams.pixel_std

    def activated(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoder's final activation, in the space the net works in (`standardized`)."""
        if self.hparams.final_activation == "leaky_relu":
            return F.leaky_relu(logits, self.hparams.final_negative_slope)
        return torch.sigmoid(logits)

    def pixels(self, logits: torch.Tensor) -> torch.Tensor:
        """The reconstruction in pixel space: the final activation, standardisation undone."""
        outputs = self.activated(logits)
        if not self.hparams.standardize_inputs:
            return outputs
        return outputs * self.hparams.pixel_std + self.hparams.pixel_mean

    def reconstruction_error(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The per-image reconstruction term of the training loss (model.reconstruction,
        model.reduction), in the space the net works in."""
        return reconstruction_error(
            logits,
            self.standardized(images),
            self.hparams.reconstruction,
            self.hparams.reduction,
            self.activated,
            getattr(self, "log_scale", None),
        )

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixel logits for latent codes."""
        return self.net.decoder(latent)

    def output(self, logits: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """The evaluation output: the final activation in pixel space (`pixels`), or report 000's
        Heaviside step (`activation`, default the configured model.output_activation)."""
        if (activation or self.hparams.output_activation) == "heaviside":
            return (logits > 0).to(logits.dtype)
        return self.pixels(logits)

    def reconstruct(self, images: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """Deterministic reconstruction in pixel space with the evaluation output activation."""
        return self.output(self.encode_pass(images).logits, activation)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(images)

    def _layers(self) -> list[tuple[str, nn.Module]]:
        stages = [("encoder", self.net.encoder), ("", [self.code_layer()]), ("decoder", self.net.decoder)]
        return [
            (f"{prefix}.{index} {type(layer).__name__}" if prefix else "bottleneck", layer)
            for prefix, layers in stages
            for index, layer in enumerate(layers)
        ]

    def layer_names(self) -> list[str]:
        """The names of `layer_activations`' layers, in order."""
        return [name for name, _ in self._layers()]

    def layer_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The activation (images, units) after every layer from input to output logits,
        deterministic path (`layer_names` names them)."""
        outputs, current = [], self.standardized(images)
        for _, layer in self._layers():
            current = layer(current)
            outputs.append(current.flatten(1))
        return outputs

    def layer_activations(self, images: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """(name, activation) after every layer from input to output logits, deterministic path."""
        return list(zip(self.layer_names(), self.layer_outputs(images), strict=True))

    def latent_statistics(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics of the bottleneck over a set of images (0-d tensors, so that members can be
        read at once); none for a deterministic code."""
        return {}

    # --- scores ----------------------------------------------------------------------------------
    def scores(
        self, images: torch.Tensor, samples: int = 0, activation: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Every per-image score (shape (N,)) from one deterministic pass: the mean per-pixel squared
        error and binary cross-entropy of the reconstruction, the cosine between input and
        reconstruction vectors, the blur (the fraction of output pixels strictly between 0.1 and
        0.9), and each model's own (`extra_scores`). `samples` is the number of latent draws for
        scores that sample (none when 0); `activation` overrides the output activation."""
        evaluated = self.encode_pass(images)
        recon = self.output(evaluated.logits, activation)
        flat_recon, flat_images = recon.flatten(1), images.flatten(1)
        clamped = flat_recon.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        return {
            "recon_mse": (flat_recon - flat_images).square().mean(1),
            "recon_bce": F.binary_cross_entropy(clamped, flat_images, reduction="none").mean(1),
            "cosine_similarity": cosine_similarity(flat_recon, flat_images, reduction="none"),
            "blur": gray_fraction(recon),
            **self.centred_cosine(flat_recon, flat_images),
            **self.extra_scores(images, evaluated, samples),
        }

    def centred_cosine(self, recon: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """With a known `pixel_mean`: `cosine_similarity_centred`, the cosine of input and
        reconstruction after subtracting it (as for centred inputs); with none, nothing."""
        mean = self.hparams.pixel_mean
        if mean is None:
            return {}
        return {"cosine_similarity_centred": cosine_similarity(recon - mean, images - mean, reduction="none")}

    def extra_scores(
        self, images: torch.Tensor, evaluated: EvaluationPass, samples: int
    ) -> dict[str, torch.Tensor]:
        """A model's own per-image scores beside the reconstruction errors."""
        return {}

    def evaluation_metrics(
        self, images: torch.Tensor, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Batch means of the training objective, its terms and the scores: what the validation and
        test stages report (as `val/<name>`, `test/<name>`). A model that samples takes its `noise`
        as `training_loss` does."""
        loss, terms = self.training_loss(images, noise)
        scores = {name: value.mean() for name, value in self.scores(images).items()}
        return {"loss": loss, **terms, **scores}

"""Encoder/decoder pairs. Each net maps an image (N, C, H, W) to a feature vector of size
`feature_dim` (the model puts its bottleneck on top), and a latent code back to pixel logits."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hydra.utils import get_class, instantiate
from torch import nn

from src.errors import ConfigValueError

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def named_activation(name: str) -> Callable[[], nn.Module]:
    """A factory of fresh activation modules of the given name (`model.net.activation`)."""
    if name not in ACTIVATIONS:
        raise ConfigValueError(f"model.net.activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _mlp(widths: Sequence[int], activation: Callable[[], nn.Module]) -> list[nn.Module]:
    """Linear layers between consecutive widths, each followed by a fresh activation module."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), activation()]
    return layers


class DenseNet(nn.Module):
    """Multilayer perceptron autoencoder body: pixels -> hidden_dims -> (bottleneck, added by the
    model) and latent -> reversed hidden_dims -> pixel logits."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (512, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = math.prod(self.image_shape)
        widths = [pixels, *hidden_dims]
        self.feature_dim = widths[-1]
        act = named_activation(activation)
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp(widths, act))
        decoder_widths = [latent_dim, *reversed(hidden_dims)]
        self.decoder = nn.Sequential(
            *_mlp(decoder_widths, act),
            nn.Linear(decoder_widths[-1], pixels),
            nn.Unflatten(1, self.image_shape),
        )


class ConvNet(nn.Module):
    """Report 004's convolutional body: 3x3 convolutions (batch norm, LeakyReLU), stride-2 layers
    halving the size, then optional dense layers; the decoder mirrors it with transposed convs."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 64),
        strides: Sequence[int] = (1, 2, 2),
        hidden_dims: Sequence[int] = (),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ConfigValueError(
                f"model.net.channels and model.net.strides need the same non-zero length, "
                f"got {list(channels)} and {list(strides)}"
            )
        if any(stride not in (1, 2) for stride in strides):
            raise ConfigValueError(f"model.net.strides may hold only 1 and 2, got {list(strides)}")
        self.image_shape = tuple(image_shape)
        in_channels, height, width = self.image_shape
        halvings = sum(stride == 2 for stride in strides)
        factor = 2**halvings
        if height % factor or width % factor:
            raise ConfigValueError(
                f"The conv net halves the image {halvings} time(s) "
                f"(strides {list(strides)}), so height and width must be divisible by {factor}; "
                f"this dataset's images are {height}x{width}. Use model/net=dense for it, or "
                f"change model.net.strides (or the dataset's image size)."
            )
        act = functools.partial(nn.LeakyReLU, negative_slope)
        encoder: list[nn.Module] = []
        decoder_convs: list[nn.Module] = []
        channels_in = [in_channels, *channels[:-1]]
        for c_in, c_out, stride in zip(channels_in, channels, strides, strict=True):
            encoder += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), act()]
            transposed = nn.ConvTranspose2d(
                c_out, c_in, 3, stride=stride, padding=1, output_padding=stride - 1
            )
            # Mirrors are prepended, so the first layer's mirror ends the decoder and outputs logits.
            decoder_convs = (
                [transposed] + ([nn.BatchNorm2d(c_in), act()] if decoder_convs else []) + decoder_convs
            )
        feature_shape = (channels[-1], height // factor, width // factor)
        conv_features = math.prod(feature_shape)
        widths = [conv_features, *hidden_dims]
        self.feature_dim = widths[-1]
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), *_mlp(widths, act))
        decoder_widths = [latent_dim, *reversed(hidden_dims)]
        self.decoder = nn.Sequential(
            *_mlp(decoder_widths, act),
            nn.Linear(decoder_widths[-1], conv_features),
            act(),
            nn.Unflatten(1, feature_shape),
            *decoder_convs,
        )


def build_net(net: Mapping[str, Any], image_shape: Sequence[int], latent_dim: int) -> nn.Module:
    """The encoder/decoder body a net config names (`_target_`: DenseNet, ConvNet or another class
    taking these arguments), built for `image_shape` and `latent_dim`. A flat config is its class
    called with its values, as Hydra's instantiate would do it, without its cost (a batched chunk
    builds a thousand models); one with nested targets goes through instantiate."""
    values = dict(net)
    if any(isinstance(value, Mapping) and "_target_" in value for value in values.values()):
        return instantiate(values, image_shape=list(image_shape), latent_dim=latent_dim)
    net_class = get_class(values.pop("_target_"))
    arguments = {key: value for key, value in values.items() if not key.startswith("_")}
    return net_class(**arguments, image_shape=list(image_shape), latent_dim=latent_dim)

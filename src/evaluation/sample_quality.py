"""Measures of generated images (report 004's Table 1 adds them beside loss and cosine):
`sharpness`, the mean gradient magnitude; `gray`, the fraction of grey pixels (blur and noise both
raise it, while noise also raises the gradient); `nn_cosine`, the cosine to the nearest reference
image; `digit_confidence`, the mean max-softmax probability of a small MNIST classifier (how
digit-like a sample is; real test digits are the scale)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.losses import gray_fraction


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean gradient magnitude sqrt(dx^2 + dy^2) of (N, 1, H, W) images, with forward
    differences (the last row and column dropped): blurry images score low, crisp strokes high."""
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    return (dx.square() + dy.square()).sqrt().flatten(1).mean(1)


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3) -> nn.Module:
    """A small MLP (784-256-10) trained on MNIST's training images, to judge whether samples are
    digits: its confidence (mean max-softmax) on real test digits is the scale to compare with."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=generator).split(256):
            optimizer.zero_grad()
            F.cross_entropy(classifier(images[index]), labels[index]).backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def digit_confidence(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-image max-softmax probability of the digit classifier: near 1 for a clear digit."""
    return classifier(images).softmax(1).amax(1)


def nearest_cosine(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image cosine similarity to the closest reference image."""
    return (F.normalize(images.flatten(1), dim=1) @ F.normalize(references.flatten(1), dim=1).T).amax(1)


@torch.no_grad()
def sample_measures(
    images: torch.Tensor, references: torch.Tensor, classifier: nn.Module
) -> dict[str, float]:
    """Means over `images` of sharpness, grey pixels, nearest-reference cosine and digit confidence."""
    return {
        "sharpness": sharpness(images).mean().item(),
        "gray": gray_fraction(images).mean().item(),
        "nn_cosine": nearest_cosine(images, references).mean().item(),
        "digit_confidence": digit_confidence(classifier, images).mean().item(),
    }

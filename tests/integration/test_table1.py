"""The digit classifier behind Table 1's sample measure, on real MNIST."""

from __future__ import annotations

import torch

from src.data.torchvision_sets import TorchvisionDataModule
from src.evaluation.sample_quality import digit_confidence, train_digit_classifier
from tests.helpers import SHARED_DATASETS, needs_shared_mnist


@needs_shared_mnist
def test_digit_classifier_is_confident_on_digits_only() -> None:
    """The judge of 'samples look like digits': accurate on MNIST's test set, confident on its
    digits, and not on uniform noise or a blank image."""
    data = TorchvisionDataModule(root=str(SHARED_DATASETS), download=False)
    classifier = train_digit_classifier(data.images("train"), data.labels("train"))
    test_images = data.images("test")[:2000]
    with torch.no_grad():
        accuracy = (classifier(test_images).argmax(1) == data.labels("test")[:2000]).float().mean()
    assert accuracy > 0.93
    digits = digit_confidence(classifier, test_images).mean()
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert digits > 0.9 and digit_confidence(classifier, noise).mean() < digits - 0.2

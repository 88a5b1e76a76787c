"""Report 000's data: images split by a line through the centre, and its four 2x2 images."""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from src.data.memory import InMemoryDataModule
from src.errors import ConfigValueError


def line_images(angles: torch.Tensor, image_size: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Images split by a directed line through the centre (shifted by `offsets` pixels along its
    normal) at `angles`: pixels left of the line are 1, the rest 0. Returns (N, 1, S, S)."""
    centre = (image_size - 1) / 2
    coords = torch.arange(image_size, dtype=torch.float64) - centre
    # y grows upwards, so that angle 0 points right and pi/2 points up as in a textbook plot.
    y, x = -coords[:, None], coords[None, :]
    cos, sin = torch.cos(angles.double())[:, None, None], torch.sin(angles.double())[:, None, None]
    # Cross product direction x (pixel - centre) > 0 <=> the pixel lies left of the directed line.
    side = cos * y - sin * x
    if offsets is not None:
        side = side - offsets.double()[:, None, None]
    return (side > 0).float().unsqueeze(1)


class LinesDataModule(InMemoryDataModule):
    """Report 000's training set: black-and-white images split by a line through the centre at an
    angle uniform in [0, 2*pi). Train, validation and test sets are disjoint draws from one seed."""

    def __init__(
        self,
        name: str = "lines",
        image_size: int = 32,
        image_shape: list[int] | None = None,
        n_train: int = 1000,
        n_val: int = 200,
        n_test: int = 200,
        offset_jitter: float = 0.0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(
            name, image_shape or [1, image_size, image_size], batch_size, num_workers, shuffle_seed
        )
        if image_size < 2:
            raise ConfigValueError(f"data.image_size must be at least 2, got {image_size}")
        self.image_size, self.offset_jitter, self.seed = image_size, offset_jitter, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        for split, count in self.sizes.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigValueError(
                    f"data.n_{split} must be a whole number >= 1 (images in the {split} set), got {count!r}"
                )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        generator = torch.Generator().manual_seed(self.seed)
        for split, count in self.sizes.items():
            angles = torch.rand(count, generator=generator, dtype=torch.float64) * 2 * math.pi
            offsets = (
                torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1
            ) * self.offset_jitter
            images = line_images(angles, self.image_size, offsets)
            self.splits[split] = TensorDataset(images, angles.float())


LINES_2X2 = ("0011", "1010", "1100", "0101")


class Lines2x2DataModule(InMemoryDataModule):
    """Report 000's four 2x2 images (pixel order upper-left, upper-right, bottom-left,
    bottom-right). Every split holds the same four images, served as one full batch."""

    def __init__(
        self, name: str = "lines2x2", image_shape: list[int] | None = None, shuffle_seed: int | None = None
    ) -> None:
        super().__init__(name, image_shape or [1, 2, 2], batch_size=len(LINES_2X2), shuffle_seed=shuffle_seed)

    def setup(self, stage: str | None = None) -> None:
        images = torch.tensor([[float(c) for c in code] for code in LINES_2X2]).view(-1, 1, 2, 2)
        labels = torch.arange(len(LINES_2X2))
        self.splits = {split: TensorDataset(images, labels) for split in ("train", "val", "test")}

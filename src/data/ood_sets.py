"""OOD sets for each dataset: the other torchvision dataset, shifts of the in-distribution test set
(flips, rotations, inversion, noise), glyphs drawn from fonts that ship with matplotlib (other
alphabets, symbols, typed digits; src/data/glyphs.py) and, for the line images, defects and images
that are not lines."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from src.data.glyphs import GLYPH_SETS, glyph_images
from src.data.lines import line_images
from src.data.torchvision_sets import TorchvisionDataModule, load_torchvision_images
from src.errors import ConfigValueError

# The other dataset of each pair, for the `mnist` and `fashion_mnist` OOD sets.
TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _random_lines(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.rand(count, generator=generator, dtype=torch.float64) * 2 * math.pi
    return line_images(angles, size), angles


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float64)
    return coords[:, None].expand(size, size), coords[None, :].expand(size, size)


def _invert_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Images with the pixels under `mask` (N, S, S) set to the opposite colour."""
    mask = mask.unsqueeze(1)
    return torch.where(mask, 1 - images, images)


def lines_with_blob(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Line images with a disc of the opposite colour (radius size/10) at a random place: a defect."""
    images, _ = _random_lines(count, size, generator)
    rows, cols = _pixel_grid(size)
    radius = max(size / 10, 1.0)
    centres = radius + torch.rand(count, 2, generator=generator, dtype=torch.float64) * (
        size - 1 - 2 * radius
    )
    inside = (rows - centres[:, 0, None, None]).square() + (cols - centres[:, 1, None, None]).square()
    return _invert_where(images, inside <= radius**2)


def lines_with_scratch(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Line images with a one-pixel-wide segment (half the image long) of the opposite colour."""
    images, _ = _random_lines(count, size, generator)
    rows, cols = _pixel_grid(size)
    centres = size / 4 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * (size / 2)
    theta = torch.rand(count, generator=generator, dtype=torch.float64) * math.pi
    dr, dc = torch.sin(theta)[:, None, None], torch.cos(theta)[:, None, None]
    rel_r, rel_c = rows - centres[:, 0, None, None], cols - centres[:, 1, None, None]
    along, across = rel_r * dr + rel_c * dc, rel_r * dc - rel_c * dr
    return _invert_where(images, (across.abs() <= 0.5) & (along.abs() <= size / 4))


def crossing_lines(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Not a line: the exclusive-or of two line images whose angles differ by 30 to 150 degrees
    (four quadrants, two white)."""
    first, angles = _random_lines(count, size, generator)
    gap = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 / 3 + 1 / 6) * math.pi
    second = line_images(angles + gap, size)
    return (first != second).float()


def circles(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Not a line: a white disc (radius size/5 to size/3) on black, or its complement, near the centre."""
    rows, cols = _pixel_grid(size)
    radius = (torch.rand(count, generator=generator, dtype=torch.float64) * (1 / 3 - 1 / 5) + 1 / 5) * size
    centres = (size - 1) / 2 + (torch.rand(count, 2, generator=generator, dtype=torch.float64) - 0.5) * 4
    inside = (rows - centres[:, 0, None, None]).square() + (cols - centres[:, 1, None, None]).square()
    discs = (inside <= radius[:, None, None].square()).float().unsqueeze(1)
    flip = torch.rand(count, generator=generator) < 0.5
    discs[flip] = 1 - discs[flip]
    return discs


LINE_DEFECTS: dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "blob": lines_with_blob,
    "scratch": lines_with_scratch,
    "crossing": crossing_lines,
    "circle": circles,
}
SHIFTS = ("hflip", "vflip", "rot90", "rot180", "rot270", "invert", "noise")
KNOWN_SETS = (*TORCHVISION_SETS, *SHIFTS, *GLYPH_SETS, *LINE_DEFECTS)


def shifted(
    images: torch.Tensor, shift: str, generator: torch.Generator, noise_amplitude: float
) -> torch.Tensor:
    """A synthetic shift of in-distribution images: a flip, a rotation by 90, 180 or 270 degrees
    (anticlockwise), the inversion 1 - x, or additive uniform noise in [-noise_amplitude,
    noise_amplitude] clipped to [0, 1]."""
    if shift == "hflip":
        return images.flip(-1)
    if shift == "vflip":
        return images.flip(-2)
    if shift.startswith("rot"):
        return torch.rot90(images, int(shift.removeprefix("rot")) // 90, dims=(-2, -1))
    if shift == "invert":
        return 1 - images
    noise = (torch.rand(images.shape, generator=generator) * 2 - 1) * noise_amplitude
    return (images + noise).clamp(0, 1)


def evenly_spaced_indices(total: int, count: int | None) -> torch.Tensor:
    """The indices `evenly_spaced` keeps of `total` items."""
    if count is None or count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long()


def evenly_spaced(items: torch.Tensor, count: int | None) -> torch.Tensor:
    """At most `count` of `items` (all when None), evenly spaced over the first dimension: a prefix
    would be biased where a dataset is ordered (MNIST's test set puts its two writer populations in
    its two halves)."""
    if count is None or count >= len(items):
        return items
    return items[evenly_spaced_indices(len(items), count)]


def ood_sets(
    names: list[str], datamodule: Any, count: int | None, seed: int = 0, noise_amplitude: float = 0.5
) -> dict[str, torch.Tensor]:
    """The OOD images (N, 1, H, W) in [0, 1] of each named set: `mnist`/`fashion_mnist` (that
    dataset's official test set, read from the datamodule's data root), a shift of the in-distribution
    test set (`hflip`, `vflip`, `rot90`, `rot180`, `rot270`, `invert`, `noise`), glyphs (`latin`,
    `greek`, `cyrillic`, `symbols`, `typed_digits`), or a line defect (`blob`, `scratch`,
    `crossing`, `circle`); glyphs and defects at the datamodule's image size. `count` caps each set
    (evenly spaced images)."""
    test_images = evenly_spaced(datamodule.images("test"), count)
    size = test_images.shape[-1]
    sets = {}
    for index, name in enumerate(names):
        # One generator per set, so adding or removing a set leaves the others unchanged.
        generator = torch.Generator().manual_seed(seed + index)
        if name in TORCHVISION_SETS:
            if name == datamodule.name:
                raise ConfigValueError(f"ood.sets holds {name!r}, the training dataset itself; remove it")
            if not isinstance(datamodule, TorchvisionDataModule):
                raise ConfigValueError(
                    f"OOD set {name!r} needs 28x28 images; remove it from ood.sets for {datamodule.name}"
                )
            images = load_torchvision_images(
                TORCHVISION_SETS[name], datamodule.root, train=False, download=datamodule.download
            ).tensors[0]
            if images.shape[-2:] != test_images.shape[-2:]:
                raise ConfigValueError(
                    f"OOD set {name!r} has {tuple(images.shape[-2:])} images but the model takes "
                    f"{tuple(test_images.shape[-2:])}; remove it from ood.sets"
                )
            sets[name] = evenly_spaced(images, count)
        elif name in SHIFTS:
            sets[name] = shifted(test_images, name, generator, noise_amplitude)
        elif name in GLYPH_SETS:
            sets[name] = glyph_images(name, len(test_images), size, generator)
        elif name in LINE_DEFECTS:
            sets[name] = LINE_DEFECTS[name](len(test_images), size, generator)
        else:
            raise ConfigValueError(f"ood.sets: unknown set {name!r}; choose from {list(KNOWN_SETS)}")
    return sets


def ood_set_classes(
    names: list[str], datamodule: Any, count: int | None
) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """For each named set whose images have classes: the class label of each of its images as
    `ood_sets` gives them, and the class names. Those are the other dataset (`mnist`,
    `fashion_mnist`) and, for a torchvision training set, the shifts of its test set (each image
    keeps its source's class: a flipped 1 is a 1 flipped)."""
    import torchvision.datasets

    classes = {}
    for name in names:
        if name in TORCHVISION_SETS and name != datamodule.name:
            dataset = TORCHVISION_SETS[name]
            test_set = load_torchvision_images(
                dataset, datamodule.root, train=False, download=datamodule.download
            )
            classes[name] = (
                evenly_spaced(test_set.tensors[1], count),
                list(getattr(torchvision.datasets, dataset).classes),
            )
        elif name in SHIFTS and isinstance(datamodule, TorchvisionDataModule):
            classes[name] = (
                evenly_spaced(datamodule.labels("test"), count),
                list(getattr(torchvision.datasets, datamodule.dataset).classes),
            )
    return classes


def ood_set_indices(names: list[str], datamodule: Any, count: int | None) -> dict[str, torch.Tensor]:
    """For each named set, the index of each of its images (as `ood_sets` gives them) in its
    source: the other dataset's test set, the in-distribution test set a shift was made from, or
    the draw of a generated set (glyphs, line defects)."""
    test_count = len(datamodule.images("test"))
    indices = {}
    for name in names:
        if name in TORCHVISION_SETS:
            source = load_torchvision_images(
                TORCHVISION_SETS[name], datamodule.root, train=False, download=datamodule.download
            )
            indices[name] = evenly_spaced_indices(len(source.tensors[0]), count)
        elif name in SHIFTS:
            indices[name] = evenly_spaced_indices(test_count, count)
        else:
            indices[name] = torch.arange(min(count, test_count) if count else test_count)
    return indices

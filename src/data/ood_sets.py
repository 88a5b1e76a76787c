"""OOD sets for each dataset: the other torchvision dataset, shifts of the in-distribution test set
(flips, rotations, inversion, noise), glyphs drawn from fonts that ship with matplotlib (other
alphabets, symbols, typed digits; src/data/glyphs.py) and, for the line images, defects and images
that are not lines."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.datasets

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


@dataclass
class OODSet:
    """One OOD set as the OOD evaluation uses it: its images (N, 1, H, W) in [0, 1], each image's
    index in its source (the other dataset's test set, the in-distribution test set a shift was
    made from, or the draw of a generated set), and, where its images have classes, each image's
    class label and the class names."""

    images: torch.Tensor
    indices: torch.Tensor
    classes: tuple[torch.Tensor, list[str]] | None = None


@dataclass
class SetRequest:
    """What building a set needs: the in-distribution datamodule, the cap on images per set, the
    set's own generator (one per set, so adding or removing a set leaves the others unchanged) and
    the amplitude of the `noise` shift."""

    datamodule: Any
    count: int | None
    generator: torch.Generator
    noise_amplitude: float

    def test_images(self) -> torch.Tensor:
        return evenly_spaced(self.datamodule.images("test"), self.count)

    def test_indices(self) -> torch.Tensor:
        return evenly_spaced_indices(len(self.datamodule.images("test")), self.count)

    def source_classes(self) -> tuple[torch.Tensor, list[str]] | None:
        """The in-distribution test images' classes, for a torchvision training set."""
        if not isinstance(self.datamodule, TorchvisionDataModule):
            return None
        names = list(getattr(torchvision.datasets, self.datamodule.dataset).classes)
        return evenly_spaced(self.datamodule.labels("test"), self.count), names


def other_dataset(name: str, request: SetRequest) -> OODSet:
    """The other torchvision dataset's official test set, read from the datamodule's data root."""
    datamodule = request.datamodule
    if name == datamodule.name:
        raise ConfigValueError(f"ood.sets holds {name!r}, the training dataset itself; remove it")
    if not isinstance(datamodule, TorchvisionDataModule):
        raise ConfigValueError(
            f"OOD set {name!r} needs 28x28 images; remove it from ood.sets for {datamodule.name}"
        )
    dataset = TORCHVISION_SETS[name]
    source = load_torchvision_images(dataset, datamodule.root, train=False, download=datamodule.download)
    images, labels = source.tensors[0], source.tensors[1]
    expected = datamodule.images("test").shape[-2:]
    if images.shape[-2:] != expected:
        raise ConfigValueError(
            f"OOD set {name!r} has {tuple(images.shape[-2:])} images but the model takes "
            f"{tuple(expected)}; remove it from ood.sets"
        )
    return OODSet(
        evenly_spaced(images, request.count),
        evenly_spaced_indices(len(images), request.count),
        (evenly_spaced(labels, request.count), list(getattr(torchvision.datasets, dataset).classes)),
    )


def shift_set(name: str, request: SetRequest) -> OODSet:
    """A shift of the in-distribution test set; each image keeps its source's class (a flipped 1
    is a 1 flipped) and index."""
    images = shifted(request.test_images(), name, request.generator, request.noise_amplitude)
    return OODSet(images, request.test_indices(), request.source_classes())


def glyph_set(name: str, request: SetRequest) -> OODSet:
    """Glyphs drawn from matplotlib's fonts at the datamodule's image size, one per test image."""
    test = request.test_images()
    return OODSet(glyph_images(name, len(test), test.shape[-1], request.generator), torch.arange(len(test)))


def defect_set(name: str, request: SetRequest) -> OODSet:
    """Defective line images (or images that are not lines), one per test image."""
    test = request.test_images()
    return OODSet(LINE_DEFECTS[name](len(test), test.shape[-1], request.generator), torch.arange(len(test)))


# Every OOD set by name: the function that builds it (the set families above).
OOD_SETS: dict[str, Callable[[str, SetRequest], OODSet]] = {
    **dict.fromkeys(TORCHVISION_SETS, other_dataset),
    **dict.fromkeys(SHIFTS, shift_set),
    **dict.fromkeys(GLYPH_SETS, glyph_set),
    **dict.fromkeys(LINE_DEFECTS, defect_set),
}
KNOWN_SETS = tuple(OOD_SETS)


def ood_sets(
    names: list[str], datamodule: Any, count: int | None, seed: int = 0, noise_amplitude: float = 0.5
) -> dict[str, OODSet]:
    """The named OOD sets (`OOD_SETS`): `mnist`/`fashion_mnist` (that dataset's test set), a shift
    of the in-distribution test set (`hflip`, `vflip`, `rot90`, `rot180`, `rot270`, `invert`,
    `noise`), glyphs (`latin`, `greek`, `cyrillic`, `symbols`, `typed_digits`) or a line defect
    (`blob`, `scratch`, `crossing`, `circle`). `count` caps each set (evenly spaced images)."""
    unknown = [name for name in names if name not in OOD_SETS]
    if unknown:
        raise ConfigValueError(f"ood.sets: unknown set(s) {unknown}; choose from {list(KNOWN_SETS)}")
    return {
        name: OOD_SETS[name](
            name, SetRequest(datamodule, count, torch.Generator().manual_seed(seed + index), noise_amplitude)
        )
        for index, name in enumerate(names)
    }

"""Datasets as LightningDataModules. Every dataset is held in memory as float tensors in [0, 1],
shaped (N, 1, H, W), with a label tensor beside it (the angle for lines, the class for MNIST)."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing (or corrupt) and cannot be downloaded."""


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


class TensorBatches(TensorDataset):
    """A TensorDataset that the DataLoader indexes one batch at a time (`__getitems__`): a single
    gather per tensor instead of a Python call and a collate per sample."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(tensor[index] for tensor in self.tensors)

    def to(self, device: torch.device) -> TensorBatches:
        return TensorBatches(*(tensor.to(device) for tensor in self.tensors))


def whole_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function for TensorBatches: its batches are already stacked."""
    return batch


class _InMemoryDataModule(pl.LightningDataModule):
    """Serves (images, labels) tensors from memory; subclasses fill the three splits in setup()."""

    def __init__(self, name: str, image_shape: list[int], batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.name = name
        self.image_shape = tuple(image_shape)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            self.setup()
        dataset = TensorBatches(*self.splits[split].tensors)
        batch_size = min(self.batch_size, len(dataset))
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cuda" and self.num_workers == 0:
            # Training on a GPU: the split lives there, so a batch is one gather on the device.
            dataset = dataset.to(device)
        # Workers (if any) are kept between epochs rather than re-forked, which would cost more
        # than a batch; pinning helps only a copy from workers to a GPU.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=whole_batch,
            pin_memory=device.type == "cuda" and self.num_workers > 0,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def images(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            self.setup()
        return self.splits[split].tensors[0]

    def labels(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            self.setup()
        return self.splits[split].tensors[1]


class LinesDataModule(_InMemoryDataModule):
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
    ) -> None:
        super().__init__(name, image_shape or [1, image_size, image_size], batch_size, num_workers)
        if image_size < 2:
            raise ValueError(f"data.image_size must be at least 2, got {image_size}")
        self.image_size, self.offset_jitter, self.seed = image_size, offset_jitter, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}

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


class Lines2x2DataModule(_InMemoryDataModule):
    """Report 000's four 2x2 images (pixel order upper-left, upper-right, bottom-left,
    bottom-right). Every split holds the same four images, served as one full batch."""

    def __init__(self, name: str = "lines2x2", image_shape: list[int] | None = None) -> None:
        super().__init__(name, image_shape or [1, 2, 2], batch_size=len(LINES_2X2))

    def setup(self, stage: str | None = None) -> None:
        images = torch.tensor([[float(c) for c in code] for code in LINES_2X2]).view(-1, 1, 2, 2)
        labels = torch.arange(len(LINES_2X2))
        self.splits = {split: TensorDataset(images, labels) for split in ("train", "val", "test")}


def data_root(root: str | Path | None) -> Path:
    """The folder that holds torchvision's dataset folders: `root`, or <project>/data."""
    return Path(root).expanduser() if root else PROJECT_ROOT / "data"


def load_torchvision_images(dataset: str, root: Path, train: bool, download: bool) -> TensorDataset:
    """Decode a torchvision MNIST-style dataset once into (images in [0, 1], labels) tensors,
    downloading only when its files are missing. Raises DatasetNotFoundError with the fix."""
    import torchvision.datasets

    if dataset not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"data.dataset must be MNIST or FashionMNIST, got {dataset!r}")
    cls = getattr(torchvision.datasets, dataset)
    raw_folder = root / dataset / "raw"
    how_to_fix = (
        f"Put the uncompressed IDX files ({dataset}/raw/*-ubyte, torchvision's layout) under {root}, "
        "or point the data root elsewhere with DATA_ROOT=/path or data.root=/path, "
        "or run once with internet access and data.download=true."
    )
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as missing:
        if not download:
            raise DatasetNotFoundError(
                f"{dataset} not found in {raw_folder} ({missing}). {how_to_fix}"
            ) from None
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as error:  # network errors come in many types (URLError, HTTPError, OSError...)
            raise DatasetNotFoundError(
                f"{dataset} not found in {raw_folder} and the download failed ({error}). {how_to_fix}"
            ) from error
    except Exception as error:  # torchvision's IDX parser raises assorted errors on damaged files
        raise DatasetNotFoundError(
            f"{dataset} files in {raw_folder} could not be read ({type(error).__name__}: {error}); "
            f"they look truncated or corrupt. Delete them and download again, or replace them. {how_to_fix}"
        ) from error
    images = ds.data
    expected = 60000 if train else 10000
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(ds.targets) != len(images):
        raise DatasetNotFoundError(
            f"{dataset} files in {raw_folder} hold images of shape {tuple(images.shape)}; expected "
            f"({expected}, 28, 28) with one label each. They look corrupt: replace them. {how_to_fix}"
        )
    return TensorDataset(images.unsqueeze(1).float().div_(255), ds.targets.clone())


class TorchvisionDataModule(_InMemoryDataModule):
    """MNIST or Fashion-MNIST: a fixed-seed train/validation split of the official training set,
    the official test set as test. Decoded once into memory (no per-sample PIL transform)."""

    def __init__(
        self,
        name: str = "mnist",
        dataset: str = "MNIST",
        image_shape: list[int] | None = None,
        root: str | None = None,
        download: bool = True,
        n_val: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__(name, image_shape or [1, 28, 28], batch_size, num_workers)
        self.dataset, self.root, self.download = dataset, data_root(root), download
        self.n_val, self.split_seed = n_val, split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        full = load_torchvision_images(self.dataset, self.root, train=True, download=self.download)
        images, labels = full.tensors
        if not 0 < self.n_val < len(images):
            raise ValueError(f"data.n_val must be between 1 and {len(images) - 1}, got {self.n_val}")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = order[: self.n_val], order[self.n_val :]
        self.splits = {
            "train": TensorDataset(images[train_idx], labels[train_idx]),
            "val": TensorDataset(images[val_idx], labels[val_idx]),
            "test": load_torchvision_images(self.dataset, self.root, train=False, download=self.download),
        }

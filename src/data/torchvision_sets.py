"""MNIST and Fashion-MNIST through torchvision.datasets, decoded once into memory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from src.data.memory import InMemoryDataModule
from src.errors import ConfigValueError, MissingFileError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(MissingFileError):
    """Raised when a dataset's files are missing (or corrupt) and cannot be downloaded."""


def data_root(root: str | Path | None) -> Path:
    """The folder that holds torchvision's dataset folders: `root`, or <project>/data."""
    return Path(root).expanduser() if root else PROJECT_ROOT / "data"


def load_torchvision_images(dataset: str, root: Path, train: bool, download: bool) -> TensorDataset:
    """Decode a torchvision MNIST-style dataset once into (images in [0, 1], labels) tensors,
    downloading only when its files are missing. Raises DatasetNotFoundError with the fix."""
    import torchvision.datasets

    if dataset not in ("MNIST", "FashionMNIST"):
        raise ConfigValueError(f"data.dataset must be MNIST or FashionMNIST, got {dataset!r}")
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


class TorchvisionDataModule(InMemoryDataModule):
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
            raise ConfigValueError(f"data.n_val must be between 1 and {len(images) - 1}, got {self.n_val}")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = order[: self.n_val], order[self.n_val :]
        self.splits = {
            "train": TensorDataset(images[train_idx], labels[train_idx]),
            "val": TensorDataset(images[val_idx], labels[val_idx]),
            "test": load_torchvision_images(self.dataset, self.root, train=False, download=self.download),
        }

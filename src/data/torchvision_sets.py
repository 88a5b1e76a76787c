"""MNIST and Fashion-MNIST through torchvision.datasets, decoded once into memory."""

from __future__ import annotations

import math
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


def idx_problems(folder: Path) -> list[str]:
    """Each IDX file in `folder` whose size differs from the one its header implies, as
    `<path>: expected N bytes, found M` (its header gives the element type and every dimension)."""
    itemsizes = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
    problems = []
    for path in sorted(folder.glob("*-ubyte")):
        data = path.read_bytes()[: 4 + 4 * 4]
        if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] not in itemsizes:
            problems.append(f"{path}: not an IDX file (its header is damaged)")
            continue
        dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
        expected = 4 + 4 * len(dims) + math.prod(dims) * itemsizes[data[2]]
        if (found := path.stat().st_size) != expected:
            problems.append(f"{path}: expected {expected} bytes, found {found}")
    return problems


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that a failed download created and left empty."""
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


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
        if damaged := idx_problems(raw_folder):
            raise DatasetNotFoundError(
                f"{dataset} files are corrupt or truncated ({'; '.join(damaged)}). Delete them and "
                f"download again, or replace them. {how_to_fix}"
            ) from None
        if not download:
            raise DatasetNotFoundError(
                f"{dataset} not found in {raw_folder} ({missing}). {how_to_fix}"
            ) from None
        created = [folder for folder in (root, root / dataset, raw_folder) if not folder.exists()]
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as error:  # network errors come in many types (URLError, HTTPError, OSError...)
            _remove_if_empty(created)
            raise DatasetNotFoundError(
                f"{dataset} not found in {raw_folder} and the download failed ({error}). {how_to_fix}"
            ) from error
    except Exception as error:  # torchvision's IDX parser raises assorted errors on damaged files
        damaged = "; ".join(idx_problems(raw_folder)) or f"{type(error).__name__}: {error}"
        raise DatasetNotFoundError(
            f"{dataset} files are corrupt or truncated ({damaged}). Delete them and download again, or "
            f"replace them. {how_to_fix}"
        ) from None
    images = ds.data
    if len(ds.targets) != len(images):
        raise DatasetNotFoundError(
            f"{dataset} in {raw_folder}: the labels file holds {len(ds.targets)} labels for {len(images)} "
            f"images; one of the two files is from another set or damaged: replace them. {how_to_fix}"
        )
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetNotFoundError(
            f"{dataset} files in {raw_folder} hold images of shape {tuple(images.shape)}; expected "
            f"(N, 28, 28). They look corrupt: replace them. {how_to_fix}"
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
        shuffle_seed: int | None = None,
        mutation_rate: float = 0.0,
    ) -> None:
        super().__init__(
            name, image_shape or [1, 28, 28], batch_size, num_workers, shuffle_seed, mutation_rate
        )
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

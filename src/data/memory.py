"""Datasets held in memory as float tensors in [0, 1], shaped (N, 1, H, W), with a label tensor
beside them, served one gathered batch at a time."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


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


class InMemoryDataModule(pl.LightningDataModule):
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

"""Datasets held in memory as float tensors in [0, 1], shaped (N, 1, H, W), with a label tensor
beside them, served one gathered batch at a time. The training order of each epoch is a function
of the shuffle seed and the epoch alone (`epoch_permutation`): a single run and a batched member
with the same seed see the same minibatches, and a resumed run goes on with the same order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from src.errors import ConfigValueError


def _signed(constant: int) -> int:
    return constant - 2**64 if constant >= 2**63 else constant


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplication wraps; shifts made logical)."""

    def shifted(value: torch.Tensor, bits: int) -> torch.Tensor:
        return (value >> bits) & ((1 << (64 - bits)) - 1)

    x = x ^ shifted(x, 30)
    x = x * _signed(0xBF58476D1CE4E5B9)
    x = x ^ shifted(x, 27)
    x = x * _signed(0x94D049BB133111EB)
    return x ^ shifted(x, 31)


def block_permutations(shuffle_seeds: Sequence[int], epochs: Sequence[int], count: int) -> torch.Tensor:
    """The order of `count` training images in each of `epochs` for each shuffle seed, shape
    (epochs, seeds, count): the argsort of a counter-based hash of (seed, epoch, index), so that a
    row depends on its own seed and epoch alone and all rows come out of one vectorised
    computation."""
    seeds = torch.as_tensor(list(shuffle_seeds), dtype=torch.int64)[None, :, None]
    epoch = torch.as_tensor(list(epochs), dtype=torch.int64)[:, None, None]
    stream = _mix(_mix(seeds * _signed(0x9E3779B97F4A7C15) + epoch))
    return torch.argsort(_mix(stream + torch.arange(count, dtype=torch.int64)), dim=-1)


def epoch_permutations(shuffle_seeds: Sequence[int], epoch: int, count: int) -> torch.Tensor:
    """The order of `count` training images in `epoch` for each shuffle seed, shape (seeds, count)."""
    return block_permutations(shuffle_seeds, [epoch], count)[0]


def epoch_permutation(shuffle_seed: int, epoch: int, count: int) -> torch.Tensor:
    """The order of `count` training images in `epoch` for `shuffle_seed` (`epoch_permutations`)."""
    return epoch_permutations([shuffle_seed], epoch, count)[0]


class EpochShuffle(Sampler[int]):
    """A random order per epoch from `epoch_permutation` (Lightning calls `set_epoch`)."""

    def __init__(self, count: int, shuffle_seed: int) -> None:
        self.count, self.shuffle_seed, self.epoch = count, shuffle_seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        # A generator: the order is drawn at the first batch, after Lightning has set the epoch
        # (on resume it creates the iterator before that).
        yield from epoch_permutation(self.shuffle_seed, self.epoch, self.count).tolist()


# Orders computed ahead for several epochs at once, up to this many indices in all: thousands of
# one-step epochs (full-batch training) would otherwise pay a hash computation each.
ORDERS_AHEAD = 2**18


class MemberShuffles:
    """The `EpochShuffle` orders of several members (one shuffle seed each), as rows of one tensor;
    Lightning calls `set_epoch` on it as on any batch sampler's `sampler`. The orders of the next
    few epochs are computed together (`ORDERS_AHEAD`) and kept until used."""

    def __init__(self, count: int, shuffle_seeds: Sequence[int]) -> None:
        self.count, self.shuffle_seeds, self.epoch = count, list(shuffle_seeds), 0
        self._ahead = max(1, min(64, ORDERS_AHEAD // max(1, count * len(self.shuffle_seeds))))
        self._first, self._orders = 0, torch.empty(0, len(self.shuffle_seeds), count, dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """(members, count): row m is member m's order in this epoch."""
        if not self._first <= self.epoch < self._first + len(self._orders):
            epochs = range(self.epoch, self.epoch + self._ahead)
            self._first, self._orders = self.epoch, block_permutations(self.shuffle_seeds, epochs, self.count)
        return self._orders[self.epoch - self._first]


class MemberBatches(Sampler[torch.Tensor]):
    """The minibatches of members trained together: step k yields a (members, batch) index tensor
    whose row m is batch k of member m's own order (batches of `batch_size`, the last one smaller,
    as a DataLoader makes them). Each epoch's orders are computed once and moved to `device`, so a
    step gathers on the device with no copy from the host."""

    def __init__(self, sampler: MemberShuffles, batch_size: int, device: torch.device) -> None:
        self.sampler, self.batch_size, self.device = sampler, batch_size, device

    def __len__(self) -> int:
        return -(-self.sampler.count // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.sampler.order().to(self.device).split(self.batch_size, dim=1)  # lazy, as EpochShuffle


class TensorBatches(TensorDataset):
    """A TensorDataset that the DataLoader indexes one batch at a time (`__getitems__`): a single
    gather per tensor instead of a Python call and a collate per sample."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        # index_select: the same gather as tensor[index], without advanced indexing's overhead.
        return tuple(tensor.index_select(0, index) for tensor in self.tensors)

    def to(self, device: torch.device) -> TensorBatches:
        return TensorBatches(*(tensor.to(device) for tensor in self.tensors))


class MemberLoader:
    """The members' training batches as Lightning iterates a loader: each step one gather of every
    member's images by the (members, batch) indices of `MemberBatches`, in a one-tuple as a
    DataLoader's batch (a DataLoader's fetch and collate machinery costs more than a full-batch
    step of small members). Lightning sets the epoch through `batch_sampler`, as on a
    DataLoader's."""

    def __init__(self, dataset: TensorBatches, batch_sampler: MemberBatches) -> None:
        self.dataset, self.batch_sampler = dataset, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        images = self.dataset.tensors[0]  # training needs the images alone
        for index in self.batch_sampler:  # images[index], gathered flat (far cheaper on a CPU)
            yield (images.index_select(0, index.reshape(-1)).view(*index.shape, *images.shape[1:]),)


def whole_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function for TensorBatches: its batches are already stacked."""
    return batch


def mutated(images: torch.Tensor, rate: float, seed: int = 0) -> torch.Tensor:
    """Ren et al. (2019)'s perturbed inputs for a background model: each pixel, with probability
    `rate`, replaced by a uniform random 8-bit value, drawn from `seed`: the same copy in every
    epoch, for every run (so that batched members equal their single runs)."""
    generator = torch.Generator().manual_seed(seed)
    replace = torch.rand(images.shape, generator=generator) < rate
    noise = torch.randint(256, images.shape, generator=generator).to(images.dtype) / 255
    return torch.where(replace, noise, images)


class InMemoryDataModule(pl.LightningDataModule):
    """Serves (images, labels) tensors from memory; subclasses fill the three splits in setup()."""

    def __init__(
        self,
        name: str,
        image_shape: list[int],
        batch_size: int,
        num_workers: int = 0,
        shuffle_seed: int | None = None,
        mutation_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= mutation_rate < 1:
            raise ConfigValueError(f"data.mutation_rate must be in [0, 1), got {mutation_rate}")
        self.mutation_rate = mutation_rate
        self.name = name
        self.image_shape = tuple(image_shape)
        self.batch_size = batch_size
        self.num_workers = num_workers
        # null (a run without a seed): a fresh order, drawn once from torch's global generator.
        self.shuffle_seed = shuffle_seed
        self.splits: dict[str, TensorDataset] = {}

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _dataset(self, split: str) -> TensorBatches:
        """The split as TensorBatches; on a GPU it lives there, so a batch is one gather on the device.
        With `mutation_rate`, the training images are served mutated (`mutated`)."""
        if split not in self.splits:
            self.setup()
        images, *rest = self.splits[split].tensors
        if split == "train" and self.mutation_rate:
            images = mutated(images, self.mutation_rate)
        dataset = TensorBatches(images, *rest)
        device = self._device()
        return dataset.to(device) if device.type == "cuda" and self.num_workers == 0 else dataset

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        batch_size = min(self.batch_size, len(dataset))
        if shuffle and self.shuffle_seed is None:
            self.shuffle_seed = int(torch.randint(2**62, ()))
        cuda = self._device().type == "cuda"
        # Workers (if any) are kept between epochs rather than re-forked, which would cost more
        # than a batch; pinning helps only a copy from workers to a GPU.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), self.shuffle_seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=whole_batch,
            pin_memory=cuda and self.num_workers > 0,
            persistent_workers=self.num_workers > 0,
            generator=self._loader_generator(),
        )

    def _loader_generator(self) -> torch.Generator:
        """Each DataLoader iterator draws its workers' base seed: from this generator, not torch's
        global one, which then serves the model's noise alone (a batched member draws that noise
        from its own generator, started in the same state)."""
        return torch.Generator().manual_seed(self.shuffle_seed or 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def member_train_dataloader(self, shuffle_seeds: Sequence[int]) -> MemberLoader:
        """The training batches of members trained together (one shuffle seed each): step k gives
        images (members, batch, C, H, W), row m being batch k of member m's single run."""
        dataset = self._dataset("train")
        batches = MemberBatches(
            MemberShuffles(len(dataset), shuffle_seeds),
            min(self.batch_size, len(dataset)),
            dataset.tensors[0].device,
        )
        return MemberLoader(dataset, batches)

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

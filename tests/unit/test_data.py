"""The datasets: line images, the 2x2 images, MNIST-style IDX files and the batch gather."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch.utils.data import DataLoader

from src.data.lines import Lines2x2DataModule, LinesDataModule, line_images
from src.data.memory import EpochShuffle, epoch_permutation
from src.data.torchvision_sets import DatasetNotFoundError, TorchvisionDataModule
from tests.helpers import SHARED_DATASETS, needs_shared_mnist


def _write_idx(folder: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, rows, cols) + images.to(torch.uint8).numpy().tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.to(torch.uint8).numpy().tobytes()
    )


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (12, 28, 28), generator=generator)
    test = torch.randint(0, 256, (5, 28, 28), generator=generator)
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw, "train", train, torch.arange(12) % 10)
    _write_idx(raw, "t10k", test, torch.arange(5))
    return tmp_path, train, test


def test_line_at_angle_zero_has_white_upper_half() -> None:
    image = line_images(torch.tensor([0.0]), 32)[0, 0]
    assert image[:16].eq(1).all() and image[16:].eq(0).all()


def test_line_pointing_up_has_white_left_half() -> None:
    image = line_images(torch.tensor([math.pi / 2]), 32)[0, 0]
    assert image[:, :16].eq(1).all() and image[:, 16:].eq(0).all()


def test_diagonal_line_splits_along_the_diagonal() -> None:
    image = line_images(torch.tensor([math.pi / 4]), 8)[0, 0]
    # Direction up-right: white above the rising diagonal, black below it (pixels whose centres lie
    # exactly on the line are left out: rounding decides them).
    row, col = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert image[row + col < 7].eq(1).all() and image[row + col > 7].eq(0).all()


def test_opposite_angles_give_complementary_images() -> None:
    angles = torch.rand(50, generator=torch.Generator().manual_seed(1)) * 2 * math.pi
    assert torch.equal(line_images(angles + math.pi, 32), 1 - line_images(angles, 32))


def test_lines_dataset_is_the_documented_family_and_deterministic() -> None:
    dm = LinesDataModule(n_train=1000, seed=3)
    dm.setup()
    images, angles = dm.splits["train"].tensors
    assert images.shape == (1000, 1, 32, 32)
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert angles.min() >= 0 and angles.max() < 2 * math.pi
    assert torch.equal(images, line_images(angles.double(), 32))
    # Uniform angles: every quarter of the circle gets about a quarter of the images.
    quarter_counts = torch.bincount((angles / (math.pi / 2)).long(), minlength=4)
    assert quarter_counts.min() > 200
    again = LinesDataModule(n_train=1000, seed=3)
    again.setup()
    assert torch.equal(again.splits["train"].tensors[0], images)
    other = LinesDataModule(n_train=1000, seed=4)
    other.setup()
    assert not torch.equal(other.splits["train"].tensors[0], images)
    assert not torch.equal(dm.splits["test"].tensors[0], images[: len(dm.splits["test"])])


def test_offset_jitter_moves_the_line_off_centre() -> None:
    centred = LinesDataModule(n_train=200, seed=0)
    jittered = LinesDataModule(n_train=200, seed=0, offset_jitter=6.0)
    centred.setup()
    jittered.setup()
    white_centred = centred.splits["train"].tensors[0].mean((1, 2, 3))
    white_jittered = jittered.splits["train"].tensors[0].mean((1, 2, 3))
    assert (white_centred - 0.5).abs().max() < 0.05
    assert (white_jittered - 0.5).abs().max() > 0.2


def test_lines2x2_pixel_order() -> None:
    dm = Lines2x2DataModule()
    dm.setup()
    images = dm.splits["train"].tensors[0]
    # Pixel order: upper-left, upper-right, bottom-left, bottom-right.
    assert images[:, 0].flatten(1).tolist() == [[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]]
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 2, 2)


def test_tiny_idx_files_load_exactly(tiny_mnist) -> None:
    root, train, test = tiny_mnist
    dm = TorchvisionDataModule(root=str(root), download=False, n_val=2, batch_size=4)
    dm.setup()
    assert len(dm.splits["train"]) == 10 and len(dm.splits["val"]) == 2
    assert torch.equal(dm.splits["test"].tensors[0], test.unsqueeze(1).float() / 255)
    assert torch.equal(dm.splits["test"].tensors[1], torch.arange(5))
    # Train and validation together are exactly the official training images.
    together = torch.cat([dm.splits["train"].tensors[0], dm.splits["val"].tensors[0]])
    assert sorted(together.flatten(1).sum(1).tolist()) == sorted(
        (train.float() / 255).flatten(1).sum(1).tolist()
    )


def test_missing_files_offline_give_a_clear_error(tmp_path: Path) -> None:
    dm = TorchvisionDataModule(root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match=r"MNIST not found in .*MNIST/raw.*DATA_ROOT"):
        dm.setup()


def test_failed_download_gives_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    def no_network(self, *args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_network)
    dm = TorchvisionDataModule(dataset="FashionMNIST", root=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError, match=r"download failed .*no route to host.*DATA_ROOT"):
        dm.setup()


def test_corrupt_file_gives_a_clear_error(tiny_mnist) -> None:
    root, _, _ = tiny_mnist
    images_file = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images_file.write_bytes(images_file.read_bytes()[:1000])  # truncated
    expected = 16 + 12 * 28 * 28
    with pytest.raises(
        DatasetNotFoundError,
        match=rf"corrupt or truncated \({images_file}: expected {expected} bytes, found 1000\)",
    ):
        TorchvisionDataModule(root=str(root), download=False, n_val=2).setup()


def test_labels_that_do_not_match_the_images_are_named(tiny_mnist) -> None:
    root, train, _ = tiny_mnist
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 2049, 11) + bytes(11))  # a whole file, one label short
    with pytest.raises(DatasetNotFoundError, match="the labels file holds 11 labels for 12 images"):
        TorchvisionDataModule(root=str(root), download=False, n_val=2).setup()


def test_a_failed_download_leaves_no_empty_folders(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    def no_network(self, *args, **kwargs):
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)  # as torchvision's own download does
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        TorchvisionDataModule(root=str(root), download=True).setup()
    assert not root.exists()


@needs_shared_mnist
@pytest.mark.parametrize(("dataset", "mean"), [("MNIST", 0.1307), ("FashionMNIST", 0.2860)])
def test_shared_datasets_load(dataset: str, mean: float) -> None:
    dm = TorchvisionDataModule(dataset=dataset, root=str(SHARED_DATASETS), download=False, n_val=5000)
    dm.setup()
    assert (
        len(dm.splits["train"]) == 55000 and len(dm.splits["val"]) == 5000 and len(dm.splits["test"]) == 10000
    )
    train_and_val = torch.cat([dm.splits["train"].tensors[0], dm.splits["val"].tensors[0]])
    assert train_and_val.mean().item() == pytest.approx(mean, abs=1e-4)
    assert dm.splits["test"].tensors[0].dtype == torch.float32
    # The split is fixed by split_seed, not by the global seed.
    torch.manual_seed(123)
    again = TorchvisionDataModule(dataset=dataset, root=str(SHARED_DATASETS), download=False, n_val=5000)
    again.setup()
    assert torch.equal(again.splits["val"].tensors[1], dm.splits["val"].tensors[1])


def test_batch_gather_serves_the_same_batches_as_per_sample_loading() -> None:
    """The datamodule's one-gather-per-batch loader: exactly the batches of the plain per-sample
    TensorDataset + default collate with the same order (so results did not change with the speed-up)."""
    module = LinesDataModule(image_size=4, n_train=50, n_val=2, n_test=2, batch_size=8, shuffle_seed=3)
    module.setup()
    plain = DataLoader(module.splits["train"], batch_size=8, sampler=EpochShuffle(50, 3))
    expected = [tuple(batch) for batch in plain]
    got = [tuple(batch) for batch in module.train_dataloader()]
    assert len(got) == len(expected) == 7 and len(got[-1][0]) == 2
    for (images, angles), (want_images, want_angles) in zip(got, expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(angles, want_angles)
        assert angles.dtype == want_angles.dtype


def test_the_training_order_is_a_function_of_shuffle_seed_and_epoch_alone() -> None:
    """The same (seed, epoch) gives the same permutation whatever else drew random numbers; other
    epochs and seeds give other permutations; torch's global generator is not touched."""
    torch.manual_seed(0)
    first = epoch_permutation(5, 0, 100)
    state = torch.get_rng_state()
    torch.manual_seed(123)
    assert torch.equal(epoch_permutation(5, 0, 100), first)
    torch.manual_seed(0)
    epoch_permutation(5, 0, 100)
    assert torch.equal(torch.get_rng_state(), state)
    assert sorted(first.tolist()) == list(range(100))
    assert not torch.equal(epoch_permutation(5, 1, 100), first)
    assert not torch.equal(epoch_permutation(6, 0, 100), first)


def test_member_batches_are_each_members_single_run_batches() -> None:
    """Row m of every step of the members' loader is the batch member m's own single-run loader
    gives, in every epoch (Lightning sets the epoch through the batch sampler's sampler)."""
    seeds = [0, 7, 3]
    module = LinesDataModule(image_size=4, n_train=50, n_val=2, n_test=2, batch_size=8)
    module.setup()
    members = module.member_train_dataloader(seeds)
    for epoch in (0, 1, 4):
        members.batch_sampler.sampler.set_epoch(epoch)
        together = list(members)
        for row, seed in enumerate(seeds):
            single = LinesDataModule(
                image_size=4, n_train=50, n_val=2, n_test=2, batch_size=8, shuffle_seed=seed
            )
            single.setup()
            loader = single.train_dataloader()
            loader.sampler.set_epoch(epoch)
            alone = list(loader)
            assert len(alone) == len(together) == 7
            # Training reads the images alone: the members' batches carry nothing else.
            for (images,), (own_images, _) in zip(together, alone, strict=True):
                assert images.shape[0] == len(seeds)
                assert torch.equal(images[row], own_images)


def test_glyph_sets_are_drawn_like_mnist_and_the_same_from_the_same_seed() -> None:
    """Each glyph fills a 20-pixel box of the 28x28 image with its centre of mass at the centre;
    the same generator seed gives the same images, another seed other ones."""
    from src.data.glyphs import GLYPH_SETS, glyph_images, typefaces_with

    assert typefaces_with("★") and "DejaVuSerif.ttf" not in typefaces_with("★")  # no box drawn instead
    for name in GLYPH_SETS:
        images = glyph_images(name, 8, 28, torch.Generator().manual_seed(1))
        assert images.shape == (8, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
        rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        mass = images.sum((1, 2, 3))
        centre_row = (images[:, 0] * rows).sum((1, 2)) / mass
        centre_col = (images[:, 0] * cols).sum((1, 2)) / mass
        assert (centre_row - 13.5).abs().max() < 1.0 and (centre_col - 13.5).abs().max() < 1.0, name
        inked = images[:, 0] > 0.1
        heights = inked.any(2).sum(1)
        widths = inked.any(1).sum(1)
        assert torch.maximum(heights, widths).max() <= 21 and torch.maximum(heights, widths).min() >= 14, name
        assert torch.equal(images, glyph_images(name, 8, 28, torch.Generator().manual_seed(1)))
        assert not torch.equal(images, glyph_images(name, 8, 28, torch.Generator().manual_seed(2)))


def test_rotations_turn_the_test_images() -> None:
    from src.data.ood_sets import shifted

    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 0, 2] = 1.0  # top right
    generator = torch.Generator()
    assert shifted(image, "rot90", generator, 0.0)[0, 0, 0, 0] == 1.0  # anticlockwise: to top left
    assert shifted(image, "rot180", generator, 0.0)[0, 0, 2, 0] == 1.0
    assert shifted(image, "rot270", generator, 0.0)[0, 0, 2, 2] == 1.0


def test_a_capped_set_is_spread_over_the_whole_set() -> None:
    from src.data.ood_sets import evenly_spaced

    items = torch.arange(10)
    assert evenly_spaced(items, 3).tolist() == [0, 4, 9]  # first, middle (4.5 rounds to even), last
    assert evenly_spaced(items, None) is items and evenly_spaced(items, 20) is items
    assert evenly_spaced(items, 10).tolist() == list(range(10))


def test_a_shifted_test_image_keeps_its_source_class(tiny_mnist) -> None:
    from src.data.ood_sets import ood_sets

    root, _, _ = tiny_mnist
    dm = TorchvisionDataModule(root=str(root), download=False, n_val=2, batch_size=4)
    dm.setup()
    sets = ood_sets(["hflip", "latin"], dm, 3)
    assert sets["latin"].classes is None  # glyphs have no classes of the training set
    labels, names = sets["hflip"].classes
    assert labels.tolist() == [0, 2, 4] and names[4] == "4 - four"
    for image, label in zip(sets["hflip"].images, labels, strict=True):
        assert torch.equal(image.flip(-1), dm.images("test")[label])  # test image i has label i
    # scores.csv's index of each image: its source test image for a shift, its draw for glyphs.
    indices = {name: ood_set.indices for name, ood_set in sets.items()}
    assert indices["hflip"].tolist() == [0, 2, 4] and indices["latin"].tolist() == [0, 1, 2]

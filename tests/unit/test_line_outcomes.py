"""Report 000's outcome on the line images, from hand-built models whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from src.data.lines import LinesDataModule, line_images
from src.evaluation.line_outcomes import LineOutcomes, nearest_line, wrong_sectors
from src.models.base import EvaluationPass


class FixedOutput:
    """A stand-in model whose output logits are a given function of the input images."""

    device = torch.device("cpu")

    def __init__(self, logits_of) -> None:  # noqa: ANN001
        self.logits_of = logits_of

    def encode_pass(self, images: torch.Tensor) -> EvaluationPass:
        return EvaluationPass(images.flatten(1)[:, :1], self.logits_of(images))


DATA = LinesDataModule(image_size=16)


def test_wrong_sectors_counts_circular_runs() -> None:
    assert wrong_sectors(torch.tensor([True, False, False, True, False, True])) == 2
    assert wrong_sectors(torch.tensor([False, True, True, False])) == 1  # wraps around
    assert wrong_sectors(torch.tensor([False, False])) == 1


def test_a_perfect_reconstruction_is_optimal() -> None:
    metrics = LineOutcomes(angles=72)(FixedOutput(lambda x: 8 * x - 4), DATA, None).metrics
    assert metrics["test/lines/outcome"] == "optimal"
    assert metrics["test/lines/correct_fraction"] == 1.0 and metrics["test/lines/wrong_sectors"] == 0
    assert metrics["test/lines/line_fit"] == 1.0 and metrics["test/lines/sigmoid_blur"] == 0.0


def test_a_constant_output_is_collapsed() -> None:
    metrics = LineOutcomes(angles=72)(FixedOutput(lambda x: torch.zeros_like(x)), DATA, None).metrics
    assert metrics["test/lines/outcome"] == "collapsed"
    assert metrics["test/lines/output_spread"] == 0.0 and metrics["test/lines/sigmoid_blur"] == 1.0


def test_outputs_rotated_in_one_half_make_one_wrong_sector() -> None:
    """Angles in [0, pi) reconstructed exactly, those in [pi, 2 pi) as the line turned by 90 degrees:
    one wrong sector of 180 degrees, and every output still a line image."""

    def logits(images: torch.Tensor) -> torch.Tensor:
        angles = torch.arange(len(images), dtype=torch.float64) * (2 * math.pi / len(images))
        shifted = torch.where(angles < math.pi, angles, angles + math.pi / 2)
        return 8 * line_images(shifted, images.shape[-1]) - 4

    metrics = LineOutcomes(angles=72)(FixedOutput(logits), DATA, None).metrics
    assert metrics["test/lines/outcome"] == "one_sector"
    assert metrics["test/lines/wrong_sectors"] == 1
    assert metrics["test/lines/wrong_degrees"] == 180.0
    assert metrics["test/lines/correct_fraction"] == 0.5 and metrics["test/lines/line_fit"] == 1.0


def test_nearest_line_of_a_line_and_of_a_defect() -> None:
    """A clean line image of the grid fits itself exactly; the same image with 10 pixels flipped
    is 10/1024 of its pixels away from it (no other line image is nearer)."""
    grid = torch.arange(360, dtype=torch.float64) * (2 * math.pi / 360)
    references = line_images(grid, 32).flatten(1).float()
    defect = references[90].clone()
    defect[:10] = 1 - defect[:10]
    fit, nearest = nearest_line(torch.stack([references[37], defect]), references)
    assert nearest[0] == 37 and fit[0] == 1.0
    assert fit[1] == pytest.approx(1 - 10 / 1024)


def test_nearest_line_equals_the_float_product_on_random_binary_images() -> None:
    """The int8 product (CPU) gives exactly the agreements and indices of the float32 one."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.arange(1440, dtype=torch.float64) * (2 * math.pi / 1440)
    references = line_images(grid, 32).flatten(1).float()
    outputs = (torch.rand(300, 1024, generator=generator) > 0.5).float()
    outputs[:100] = references[torch.randint(0, 1440, (100,), generator=generator)]
    fit, nearest = nearest_line(outputs, references)
    expected = (1 - torch.cdist(outputs, references, p=1) / 1024).max(dim=1)
    assert torch.equal(fit, expected.values) and torch.equal(nearest, expected.indices)

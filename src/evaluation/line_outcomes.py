"""Report 000's outcome of a run on the line images, read off a dense grid of angles.

The model reconstructs the clean line image at each of `angles` evenly spaced angles; each
reconstruction, after the Heaviside swap (the sigmoid output thresholded at 0.5), is matched to
the nearest clean line image of a finer reference grid. An angle is reconstructed correctly when
that nearest line is within `angle_tolerance_deg` of the input's angle and the reconstruction is a
line image (at least `min_line_fit` of its pixels agree with the nearest one). Contiguous runs of
wrong angles are the report's wrong ("kaleidoscopic") sectors; a model whose outputs barely change
with the angle has collapsed to a constant image.

Metrics (`test/lines/*`): `correct_fraction`, `wrong_sectors`, `wrong_degrees` (total width of the
wrong sectors), `line_fit` (mean), `output_spread` (mean over pixels of the spread of the sigmoid
output over angles), `sigmoid_blur` (grey pixels of the sigmoid output); and `outcome`:
`optimal` (every angle correct), `one_sector`, `sectors` (several wrong sectors), `collapsed`.

The report closes with "if one gives an input to the VA that contains a defect or does not
represent a line, it will still output a line". For the test images and each anomaly set named in
`sets` (defects and non-lines, src/data/ood_sets.py), `test/lines/<set>/line_distance` is the mean
fraction of pixels in which the Heaviside reconstruction differs from its nearest clean line image,
and `test/lines/<set>/outputs_a_line` the fraction of images whose reconstruction is a line image
(within `min_line_fit`)."""

from __future__ import annotations

import functools
import math

import torch

from src.data.lines import line_images
from src.data.memory import InMemoryDataModule
from src.data.ood_sets import ood_sets
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.models.base import ReconstructionModel
from src.models.losses import gray_fraction

LINE_OUTCOMES = ("optimal", "one_sector", "sectors", "collapsed")


def wrong_sectors(correct: torch.Tensor) -> int:
    """The number of maximal runs of False in a circular sequence (angles wrap around)."""
    wrong = ~correct
    if wrong.all():
        return 1
    starts = wrong & ~torch.roll(wrong, 1)  # a wrong angle after a correct one
    return int(starts.sum())


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest absolute difference of angles in radians, on the circle."""
    difference = torch.remainder(a - b, 2 * math.pi)
    return torch.minimum(difference, 2 * math.pi - difference)


def classify_lines(correct: torch.Tensor, output_spread: float, collapse_spread: float) -> str:
    if output_spread < collapse_spread:
        return "collapsed"
    if correct.all():
        return "optimal"
    return "one_sector" if wrong_sectors(correct) == 1 else "sectors"


def nearest_line(outputs: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For 0/1 outputs (N, pixels): the pixel agreement with the nearest of the reference line
    images (R, pixels), 1 - mean |output - reference|, and that reference's index. For 0/1 values
    |o - r| summed over pixels is sum(o) + sum(r) - 2 o.r: one product, exact in float32; on a CPU
    made in int8 with int32 sums (exact too, and several times faster)."""
    if outputs.device.type == "cpu":
        overlaps = torch._int_mm(outputs.to(torch.int8), references.to(torch.int8).T.contiguous())
    else:  # a GPU's int8 product needs row and column counts the grids need not have
        overlaps = outputs @ references.T
    mismatches = outputs.sum(1, keepdim=True) + references.sum(1) - 2 * overlaps.to(outputs.dtype)
    return (1 - mismatches / outputs.shape[1]).max(dim=1)


def _logits(model: ReconstructionModel, images: torch.Tensor) -> torch.Tensor:
    return model.encode_pass(images).logits


@functools.cache
def _reference_images(count: int, size: int) -> torch.Tensor:
    """The clean line images (flattened) at `count` evenly spaced angles, built once per process."""
    return line_images(circle_angles(count), size).flatten(1)


def circle_angles(count: int) -> torch.Tensor:
    """`count` evenly spaced angles over the circle, in radians, from 0."""
    return torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)


class LineOutcomes:
    """The `line_outcomes` evaluation (conf/evaluations/lines.yaml): see the module docstring."""

    def __init__(
        self,
        angles: int = 360,
        reference_angles: int = 1440,
        angle_tolerance_deg: float = 10.0,
        min_line_fit: float = 0.95,
        collapse_spread: float = 0.05,
        sets: list[str] | tuple[str, ...] = (),
        seed: int = 0,
        noise_amplitude: float = 0.5,
    ) -> None:
        self.angles, self.reference_angles = angles, reference_angles
        self.sets, self.seed, self.noise_amplitude = list(sets), seed, noise_amplitude
        self.angle_tolerance = math.radians(angle_tolerance_deg)
        self.min_line_fit, self.collapse_spread = min_line_fit, collapse_spread

    def _grids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The angles reconstructed and the finer angles of the reference line images (radians)."""
        return circle_angles(self.angles), circle_angles(self.reference_angles)

    def _inputs(self, datamodule: InMemoryDataModule) -> dict[str, torch.Tensor]:
        """The images each model reconstructs: the clean lines of the grid (`angles`), the test
        images and each anomaly set's."""
        sets = ood_sets(self.sets, datamodule, None, self.seed, self.noise_amplitude)
        return {
            "angles": line_images(self._grids()[0], datamodule.image_shape[-1]),
            "test": datamodule.images("test"),
            **{name: ood_set.images for name, ood_set in sets.items()},
        }

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        inputs = self._inputs(datamodule)
        logits = {name: _logits(model, images.to(model.device)) for name, images in inputs.items()}
        return EvaluationResult(self.readings(logits, datamodule.image_shape[-1]))

    @torch.no_grad()
    def evaluate_members(
        self, members: MemberSet, datamodule: InMemoryDataModule, contexts: list[EvaluationContext]
    ) -> list[EvaluationResult]:
        """Every member's readings, the images built once and passed through all members at once."""
        final = members.final
        logits = {
            name: final.call_batched(_logits, images) for name, images in self._inputs(datamodule).items()
        }
        size = datamodule.image_shape[-1]
        return [
            EvaluationResult(self.readings({name: values[index] for name, values in logits.items()}, size))
            for index in range(len(contexts))
        ]

    def readings(self, logits: dict[str, torch.Tensor], size: int) -> dict[str, float | int | str]:
        """The `test/lines/*` metrics of one model from its logits of each input (`_inputs`)."""
        grid, reference_grid = self._grids()
        device = logits["angles"].device
        references = _reference_images(self.reference_angles, size).to(device)
        sigmoid = torch.sigmoid(logits["angles"])
        heaviside = (logits["angles"] > 0).to(sigmoid.dtype).flatten(1)
        fit, nearest = nearest_line(heaviside, references)
        error = angular_distance(reference_grid.to(device)[nearest], grid.to(device))
        correct = (error <= self.angle_tolerance) & (fit >= self.min_line_fit)
        spread = float(sigmoid.flatten(1).std(dim=0).mean())
        sectors = 0 if correct.all() else wrong_sectors(correct.cpu())
        metrics: dict[str, float | int | str] = {
            "test/lines/outcome": classify_lines(correct.cpu(), spread, self.collapse_spread),
            "test/lines/correct_fraction": float(correct.float().mean()),
            "test/lines/wrong_sectors": sectors,
            "test/lines/wrong_degrees": float((~correct).sum()) * 360.0 / self.angles,
            "test/lines/line_fit": float(fit.mean()),
            "test/lines/output_spread": spread,
            "test/lines/sigmoid_blur": float(gray_fraction(sigmoid).mean()),
        }
        for name, values in logits.items():
            if name == "angles":
                continue
            outputs = (values > 0).to(sigmoid.dtype).flatten(1)
            fit = nearest_line(outputs, references)[0]
            metrics[f"test/lines/{name}/line_distance"] = float((1 - fit).mean())
            metrics[f"test/lines/{name}/outputs_a_line"] = float((fit >= self.min_line_fit).float().mean())
        return metrics

"""Report 000's convergence census on the four 2x2 images: which solution did a run converge to,
and, when images were merged, at which layer the network stopped telling them apart.

Outcomes, checked in this order on the deterministic outputs (the VAE uses z = mu):
- all_gray:         every output pixel of every image within 0.1 of 0.5;
- optimal:          the rounded outputs equal the inputs (all 16 pixels);
- one_merged_pair:  images whose outputs differ by less than 0.1 at every pixel are grouped;
  two_merged_pairs  exactly one group of two, or exactly two groups of two;
- other:            anything else (e.g. three images merged, or a wrong but distinct output).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from src.data.lines import LINES_2X2
from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.models.base import ReconstructionModel

OUTCOMES = ("all_gray", "optimal", "one_merged_pair", "two_merged_pairs", "other")
GRAY_TOLERANCE = 0.1
MERGE_TOLERANCE = 0.1
# Activations this close count as identical: the network can no longer tell the images apart.
IDENTICAL_TOLERANCE = 1e-6


def merged_groups(outputs: torch.Tensor) -> list[list[int]]:
    """Groups (of two or more) of images whose outputs differ by less than MERGE_TOLERANCE at
    every pixel, closed transitively. `outputs` is (images, pixels)."""
    group_of = list(range(len(outputs)))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            if (outputs[i] - outputs[j]).abs().max() < MERGE_TOLERANCE:
                old, new = group_of[j], group_of[i]
                group_of = [new if g == old else g for g in group_of]
    groups: dict[int, list[int]] = {}
    for image, group in enumerate(group_of):
        groups.setdefault(group, []).append(image)
    return [members for members in groups.values() if len(members) > 1]


def classify_outcome(inputs: torch.Tensor, outputs: torch.Tensor) -> str:
    """The outcome name (see the module docstring) for inputs and outputs of shape (images, pixels)."""
    if (outputs - 0.5).abs().lt(GRAY_TOLERANCE).all():
        return "all_gray"
    if torch.equal(outputs.round(), inputs):
        return "optimal"
    sizes = sorted(len(group) for group in merged_groups(outputs))
    return {(2,): "one_merged_pair", (2, 2): "two_merged_pairs"}.get(tuple(sizes), "other")


def why_identical(activations: list[tuple[str, torch.Tensor]], images: list[int]) -> str:
    """The first layer after which the given images have identical activations, and whether that is
    because every unit there is zero for all of them (dead ReLUs)."""
    for name, values in activations:
        chosen = values[images]
        if (chosen - chosen[0]).abs().max() <= IDENTICAL_TOLERANCE:
            dead = "ReLU" in name and chosen.abs().max() <= IDENTICAL_TOLERANCE
            return f"{name}: all units zero" if dead else f"{name}: identical"
    return "outputs close, no identical layer"


def outcome_readings(
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    activations: Callable[[], list[tuple[str, torch.Tensor]]],
) -> dict[str, str | int]:
    """`test/outcome` for the 2x2 images (`inputs`, `outputs`: (images, pixels)), `test/gray_pixels`
    (outputs within 0.1 of 0.5, of 16), and for merges or gray outputs, `test/merged_images` and
    `test/merge_reason` (the layer where the merged images became identical, from the model's
    `activations`, asked for only then)."""
    outcome = classify_outcome(inputs, outputs)
    # Gray pixels tell "other" apart: e.g. two images exact and two with their ambiguous pixels at 0.5.
    metrics: dict[str, str | int] = {
        "test/outcome": outcome,
        "test/gray_pixels": int((outputs - 0.5).abs().lt(GRAY_TOLERANCE).sum()),
    }
    if outcome == "all_gray":
        groups = [list(range(len(inputs)))]
    elif outcome in ("one_merged_pair", "two_merged_pairs"):
        groups = merged_groups(outputs)
    else:
        return metrics
    layers = activations()
    metrics["test/merged_images"] = " ".join("=".join(LINES_2X2[i] for i in group) for group in groups)
    metrics["test/merge_reason"] = " / ".join(sorted({why_identical(layers, group) for group in groups}))
    return metrics


@torch.no_grad()
def outcome_metrics(model: ReconstructionModel, images: torch.Tensor) -> dict[str, str | int]:
    """`outcome_readings` of one model on the 2x2 images."""
    model.eval()
    images = images.to(model.device)
    outputs = model.reconstruct(images).flatten(1)
    return outcome_readings(images.flatten(1), outputs, lambda: model.layer_activations(images))


def _reconstructions(model: ReconstructionModel, images: torch.Tensor) -> torch.Tensor:
    return model.reconstruct(images).flatten(1)


class CensusOutcome:
    """The `census` evaluation: report 000's outcome of a run on the 2x2 images (test split)."""

    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        return EvaluationResult(outcome_metrics(model, datamodule.images("test")))

    @torch.no_grad()
    def evaluate_members(
        self, members: MemberSet, datamodule: InMemoryDataModule, contexts: list[EvaluationContext]
    ) -> list[EvaluationResult]:
        """Every member's outcome from one pass of the images through all members' weights."""
        final = members.final
        images = datamodule.images("test").to(final.device)
        outputs = final.call(_reconstructions, images)
        names = final.template.layer_names()
        layers = final.call(ReconstructionModel.layer_outputs, images)
        return [
            EvaluationResult(
                outcome_readings(
                    images.flatten(1),
                    outputs[index],
                    lambda index=index: [
                        (name, values[index]) for name, values in zip(names, layers, strict=True)
                    ],
                )
            )
            for index in range(len(contexts))
        ]

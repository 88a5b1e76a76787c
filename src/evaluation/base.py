"""What every post-test evaluation is: built from its config entry (conf/evaluations/<data>.yaml),
run on the tested model, returning its metrics and the figures it wrote."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from src.data.memory import InMemoryDataModule
from src.models.base import ReconstructionModel
from src.models.members import MemberModels


@dataclass
class EvaluationContext:
    """Where an evaluation writes (`run_dir`), whether it draws figures, the run's config, and the
    project's checkpoint loader (`load_model`: a checkpoint path to its model), for evaluations
    that need another trained model."""

    run_dir: Path
    figures: bool
    config: DictConfig
    load_model: Callable[[Path], ReconstructionModel] | None = None


@dataclass
class EvaluationResult:
    """Metrics for metrics.json (flat `stage/name` keys) and the PNG figures written."""

    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    def merge(self, other: EvaluationResult) -> None:
        """Add another evaluation's metrics and figures to these."""
        self.metrics.update(other.metrics)
        self.figures += other.figures


@dataclass
class MemberSet:
    """The members of a batched chunk, for evaluations that evaluate them all at once
    (`evaluate_members`): their final weights stacked (`final`), their initial weights (`initial`,
    as training started from them), and member i as a model of its own (`model(i)`, on the device
    the members trained on)."""

    final: MemberModels
    initial: MemberModels | None
    model: Callable[[int], ReconstructionModel]

    def select(self, indices: Sequence[int]) -> MemberSet:
        """The members `indices`, numbered from 0 in that order."""
        chosen = list(indices)
        return MemberSet(
            self.final.select(chosen),
            None if self.initial is None else self.initial.select(chosen),
            lambda index: self.model(chosen[index]),
        )


class Evaluation(Protocol):
    """One model's evaluation. An evaluation may also define `evaluate_members(members: MemberSet,
    datamodule, contexts: list[EvaluationContext]) -> list[EvaluationResult]`, the same results for
    every member of a batched chunk at once (its per-image work vmapped over the members); without
    it, members are evaluated one by one."""

    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult: ...

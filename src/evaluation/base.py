"""What every post-test evaluation is: built from its config entry (conf/evaluations/<data>.yaml),
run on the tested model, returning its metrics and the figures it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from src.data.memory import InMemoryDataModule
from src.models.base import ReconstructionModel


@dataclass
class EvaluationContext:
    """Where an evaluation writes (`run_dir`), whether it draws figures, and the run's config."""

    run_dir: Path
    figures: bool
    config: DictConfig


@dataclass
class EvaluationResult:
    """Metrics for metrics.json (flat `stage/name` keys) and the PNG figures written."""

    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


class Evaluation(Protocol):
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult: ...

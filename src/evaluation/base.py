"""What every post-test evaluation is: built from its config entry (conf/evaluations/<data>.yaml),
run on the tested model, returning its metrics and the figures it wrote."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from src.data.memory import InMemoryDataModule
from src.models.base import ReconstructionModel


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


class Evaluation(Protocol):
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult: ...

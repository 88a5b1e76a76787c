"""Fixtures: composing the real configs the way `python -m src.run` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from src.pipeline.config import compose_config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path / "run")

    return make


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished CA run on the 2x2 images, under an output root of its own: the witness whose files
    must survive every refused or failed command started beside it."""
    from src.pipeline.run import Run
    from src.pipeline.training import train
    from tests.helpers import FAST

    run = tmp_path_factory.mktemp("root") / "runs" / "finished"
    train(Run(compose_config(["data=lines2x2", *FAST, "trainer.max_epochs=2"], run), run))
    return run

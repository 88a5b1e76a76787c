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

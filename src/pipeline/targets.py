"""Which classes a config may build by `_target_`: those that the project's own config tree (conf/)
names, the optimisers of torch.optim, the documented extras, and, in a job started from the command
line, whatever that command line names itself. A run folder's config.yaml is data: a `_target_` in
it outside that list is refused before anything is imported or built (docs/run-folder.md)."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import ConfigValueError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
# Classes the documentation offers beside those of conf/ (docs/configuration.md, "callbacks").
EXTRAS = ("pytorch_lightning.callbacks.LearningRateMonitor",)


class UntrustedTargetError(ConfigValueError):
    """A `_target_` that is not a class this project builds."""


def _targets_in(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every `_target_` in plain nested dicts and lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "_target_":
                yield path, value
            else:
                yield from _targets_in(value, f"{path}.")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets_in(value, f"{prefix}{index}.")


@functools.cache
def trusted_targets() -> frozenset[str]:
    """The `_target_`s of every YAML file under conf/, torch.optim's optimisers and EXTRAS."""
    import torch

    named = {
        str(target)
        for file in CONFIG_DIR.rglob("*.yaml")
        for _, target in _targets_in(yaml.safe_load(file.read_text()) or {})
    }
    optimisers = {
        f"torch.optim.{name}"
        for name, value in vars(torch.optim).items()
        if inspect.isclass(value)
        and issubclass(value, torch.optim.Optimizer)
        and value is not torch.optim.Optimizer
    }
    return frozenset(named | optimisers | set(EXTRAS))


def command_line_targets(overrides: Iterable[str]) -> frozenset[str]:
    """The `_target_`s that command-line overrides name themselves (the user's own classes, e.g.
    `+callbacks.probe._target_=my.Callback`): what the user typed is theirs to run."""
    return frozenset(
        match for override in overrides for match in re.findall(r"_target_\s*[:=]\s*['\"]?([\w.]+)", override)
    )


def check_targets(config: Any, also: frozenset[str] = frozenset(), source: str = "the config") -> None:
    """Refuse a `_target_` in `config` (a DictConfig or plain values) that is neither trusted nor in
    `also`, before anything is imported: one line naming the key and where it came from."""
    prefix = ""
    if isinstance(config, DictConfig | ListConfig):
        full_key = config._get_full_key(None)
        prefix = f"{full_key}." if full_key else ""
        config = OmegaConf.to_container(config, resolve=False)
    if not prefix and isinstance(config, dict):  # Hydra's own section: read from conf/, never from a folder
        config = {key: value for key, value in config.items() if key != "hydra"}
    allowed = trusted_targets() | also
    for key, target in _targets_in(config, prefix):
        if not isinstance(target, str) or target not in allowed:
            raise UntrustedTargetError(
                f"{key}={target!r} in {source} is not a class this project builds (a run folder is data, "
                "never code: only the classes conf/ names are built, docs/run-folder.md); restore the "
                "run's config.yaml, or name a class of conf/."
            )

"""Hydra's Optuna sweeper with a study that outlives its process: in storage (an SQLite file by
default, any Optuna RDB URL), `n_trials` is the study's total, so a search stopped part way and
started again with the same command runs only the trials it still lacks, and several searches
started on one storage (processes, SLURM jobs) add their trials to one study. A study is its
`study_name` in its storage: a search with other fixed settings needs a name of its own."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


class ResumableOptunaSweeper(OptunaSweeper):
    """OptunaSweeper (same settings) that resumes its study from `storage`."""

    def sweep(self, arguments: list[str]) -> Any:
        search = self.sweeper
        if isinstance(search.storage, str) and search.storage.startswith(SQLITE):
            Path(search.storage.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
        if search.storage is not None:
            done = finished_trials(search.storage, search.study_name)
            search.n_trials = max(search.n_trials - done, 0)
            log.info(
                "Study %s in %s: %d trial(s) finished before, %d to run",
                search.study_name, search.storage, done, search.n_trials,
            )  # fmt: skip
            if done and hasattr(search.sampler, "reseed_rng"):
                # The sampler starts from its configured seed on every start: its first, random
                # suggestions would repeat the trials the study already has.
                search.sampler.reseed_rng()
            # With nothing left to run no job makes the sweep folder, where the best is written.
            Path(str(search.sweep_dir)).mkdir(parents=True, exist_ok=True)
        return super().sweep(arguments)


def finished_trials(storage: str, study_name: str) -> int:
    """Trials of the study that ended (complete, pruned or failed); 0 when there is no such study.
    A trial whose process was killed stays RUNNING (Optuna 2's ask-and-tell records no heartbeat)
    and is not counted: the resumed search runs another in its place."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(trial.state in ended for trial in study.get_trials(deepcopy=False))

"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's SLURM
launcher, one SLURM array task per job, that submits only the jobs a sweep started again has not
finished (src.pipeline.run.earlier_state), waits without SLURM accounting and past a cancelled job
(src/pipeline/cluster.py), records what it submitted (<sweep>/jobs.json), and with `detach` returns
once the jobs and a summary job after them are submitted (docs/cluster.md)."""

# No `from __future__ import annotations` here: Hydra loads plugin modules outside sys.modules.
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

from hydra_plugins.batched_launcher.batched_launcher import Job, completed, earlier_states, split_seed

log = logging.getLogger(__name__)


@dataclass
class SlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's SLURM settings and `detach` (conf/hydra/launcher/slurm.yaml)."""

    _target_: str = "hydra_plugins.slurm_launcher.slurm_launcher.SlurmLauncher"
    detach: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="slurm_base", node=SlurmConf, provider="aevae")


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def __init__(self, detach: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.detach = detach

    def executor(self) -> Any:
        """submitit's executor with this launcher's parameters (as hydra-submitit-launcher builds it)."""
        import submitit

        from src.pipeline.cluster import watch_queue

        watch_queue()
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in generic else f"{self._EXECUTOR}_{key}": value
                for key, value in self.params.items()
                if key not in init_keys
            }
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from src.analysis.sweep import write_summary
        from src.pipeline.cluster import detach, record_submission, wait_for
        from src.pipeline.run import kept, read_run

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[str, ...], list[Job]] = {}
        for offset, overrides in enumerate(job_overrides):
            rest, seed = split_seed(overrides)
            groups.setdefault(rest, []).append((initial_job_idx + offset, overrides, seed))
        returns: dict[int, JobReturn] = {}
        pending: list[tuple[Job, Path]] = []
        for jobs in groups.values():
            template = self.hydra_context.config_loader.load_sweep_config(self.config, list(jobs[0][1]))
            states = earlier_states(template, jobs)
            for job in jobs:
                state, run_dir = states[job[0]]
                if kept(state, template):  # finished in an earlier start of this sweep
                    returns[job[0]] = completed(job[1], read_run(run_dir).metrics.get("val/loss"))
                else:
                    pending.append((job, run_dir))
        if not pending:
            return [returns[index] for index in sorted(returns)]
        state = Singleton.get_state()
        params = [
            (list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}", state)
            for (index, overrides, _), _ in pending
        ]
        executor = self.executor()
        submitted = executor.map_array(self, *zip(*params, strict=True))
        log.info(
            "SLURM: %d job(s) submitted to %s, array %s",
            len(submitted),
            sweep_dir,
            submitted[0].job_id.split("_")[0],
        )
        record_submission(
            sweep_dir,
            {
                str(run_dir.relative_to(sweep_dir)): (overrides, job.job_id)
                for ((_, overrides, _), run_dir), job in zip(pending, submitted, strict=True)
            },
        )
        if self.detach:
            detach(executor, sweep_dir, [job.job_id for job in submitted], len(submitted), write_summary)
            results = [completed(overrides, None) for (_, overrides, _), _ in pending]
        else:
            labels = [f"Job #{index} ({' '.join(filter_overrides(o))})" for (index, o, _), _ in pending]
            results = [
                result or completed(overrides, None)
                for result, ((_, overrides, _), _) in zip(wait_for(submitted, labels), pending, strict=True)
            ]
        returns.update({index: result for ((index, *_), _), result in zip(pending, results, strict=True)})
        return [returns[index] for index in sorted(returns)]

"""`hydra/launcher=batched` (conf/hydra/launcher/batched.yaml): trains the jobs of a sweep that
differ only in `seed` together, as one batched model through a Lightning Trainer
(src/pipeline/batched.py), in chunks of at most `max_members`, then writes each job's folder as a
normal run would (.hydra/config.yaml and overrides.yaml, config.yaml, history.csv, metrics.json,
checkpoints/last.ckpt, figures when `figures=true`), so the sweep summary sees ordinary jobs. A
chunk's own checkpoint is in <sweep>/batched/<first>-<last>/: an interrupted chunk started again
with the same command resumes from it.
Jobs it cannot batch run one by one through Hydra's usual job runner, as the basic launcher does.

Hydra's basic sweeper composes every job's config before launching, to fail early; for a thousand
seeds that costs more than training a thousand tiny models, so the project's sweeper
(`GroupedSweeper`, conf/hydra/sweeper/grouped.yaml) checks one job per group of seed-only variants."""

# No `from __future__ import annotations` here: Hydra loads plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import copy
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()  # building the grammar is slow: once per process


def split_seed(overrides: Sequence[str]) -> tuple[tuple[str, ...], int | None]:
    """The overrides other than `seed`, and the seed value (None if not overridden)."""
    rest, seed = [], None
    parsed_overrides = _parser().parse_overrides(list(overrides))
    for override, parsed in zip(overrides, parsed_overrides, strict=True):
        if parsed.key_or_group == "seed" and not parsed.package:
            seed = parsed.value()
        else:
            rest.append(override)
    return tuple(rest), seed


# Job keys that tell every job of a sweep apart.
UNIQUE_PER_JOB = ("hydra.job.num", "hydra.job.id", "hydra.job.override_dirname")


def shared_job_folder(subdir: str, batch: Sequence[Sequence[str]]) -> tuple[int, int] | None:
    """Two jobs of `batch` (by position) that the unresolved `hydra.sweep.subdir` would put into one
    folder, or None: jobs whose overrides give every key the subdir names the same value (a key no
    override sets has the base config's value in each). Overrides of config groups may change any
    key, so jobs that differ in one are counted apart."""
    from src.pipeline.config import CONFIG_GROUPS

    names = re.findall(r"\$\{([\w.]+)\}", subdir)
    if any(name in UNIQUE_PER_JOB for name in names):
        return None
    seen: dict[tuple[str, ...], int] = {}
    for position, overrides in enumerate(batch):
        parsed = _parser().parse_overrides(list(overrides))
        key = tuple(
            text
            for text, override in zip(overrides, parsed, strict=True)
            if override.key_or_group.split("/")[0] in CONFIG_GROUPS
            or any(
                name == override.key_or_group or name.startswith(override.key_or_group + ".")
                for name in names
            )
        )
        if key in seen:
            return seen[key], position
        seen[key] = position
    return None


# A job of a sweep: its number (hydra.job.num), its overrides and its seed.
Job = tuple[int, Sequence[str], int | None]


def job_folder(template: DictConfig, index: int, seed: int | None, sweep_dir: Path | None = None) -> Path:
    """Job `index`'s folder, hydra.sweep.subdir resolved on `template` (its group's composed config)
    pointed at the job's seed and number; `sweep_dir`: the sweep's folder, when already resolved (it
    is every job's, and its resolvers cost more than the rest)."""
    subdir = OmegaConf.to_container(template.hydra.sweep, resolve=False)["subdir"]
    if sweep_dir is not None and subdir == "${hydra.job.num}":  # the default, without resolving
        return sweep_dir / str(index)
    with read_write(template), open_dict(template), read_write(template.hydra.job):
        template.seed = seed
        template.hydra.job.num = template.hydra.job.id = index
    folder = sweep_dir if sweep_dir is not None else Path(str(template.hydra.sweep.dir))
    return folder / str(template.hydra.sweep.subdir)


def earlier_states(template: DictConfig, jobs: Sequence[Job]) -> dict[int, tuple[str, Path]]:
    """For a sweep started again in its folder: each job's folder and what an earlier start left
    there (src.pipeline.run.earlier_state), its composed config (.hydra/config.yaml, as Hydra and
    this launcher write it) compared with the job's."""
    from src.pipeline.run import config_changes, earlier_state

    task = OmegaConf.to_container(template, resolve=False)
    task.pop("hydra", None)
    states, sweep_dir = {}, Path(str(template.hydra.sweep.dir))
    for index, _, seed in jobs:
        run_dir = job_folder(template, index, seed, sweep_dir)

        def same_config(run_dir: Path = run_dir, seed: int | None = seed) -> bool:
            return not config_changes(run_dir, {**task, "seed": seed})

        states[index] = (earlier_state(run_dir, same_config), run_dir)
    return states


def says_what_resumes(sweep_dir: str, states: Sequence[str], replace: bool) -> None:
    """One line, when a sweep starts again in a folder holding an earlier start's jobs (`replace`:
    with overwrite=true, which trains the finished ones and another config's again)."""
    from src.pipeline.run import FAILED, FINISHED, INTERRUPTED, NEW, OTHER

    counts = {
        state: sum(1 for s in states if s == state) for state in (FINISHED, INTERRUPTED, FAILED, OTHER, NEW)
    }
    if counts[NEW] == len(states):
        return
    if replace:
        log.info(
            "Sweep %s started again with overwrite=true: %d finished and %d of another config replaced, "
            "%d interrupted (resumed from last.ckpt), %d failed (trained afresh), %d new",
            sweep_dir,
            *(counts[state] for state in (FINISHED, OTHER, INTERRUPTED, FAILED, NEW)),
        )
        return
    log.info(
        "Sweep %s started again: %d finished (skipped), %d interrupted (resumed from last.ckpt), "
        "%d failed (trained afresh), %d new",
        sweep_dir,
        *(counts[state] for state in (FINISHED, INTERRUPTED, FAILED, NEW)),
    )


def foreign_jobs(sweep_dir: Path, folders: set[Path]) -> list[str]:
    """The job folders directly in `sweep_dir` (holding a config.yaml or a .hydra/) that are not
    among this sweep's `folders`: an earlier sweep's jobs this one does not name."""
    if not sweep_dir.is_dir():
        return []
    return sorted(
        (
            entry.name
            for entry in sweep_dir.iterdir()
            if entry.is_dir()
            and entry not in folders
            and ((entry / "config.yaml").is_file() or (entry / ".hydra").is_dir())
        ),
        key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name),
    )


def completed(overrides: Sequence[str], value: Any) -> JobReturn:
    """The return of a job that ran elsewhere, earlier or not at all (a cluster job, a finished job of
    a sweep started again, a detached sweep's job): its folder says how it went."""
    result = JobReturn(overrides=list(overrides), working_dir=str(Path.cwd()))
    result.status = JobStatus.COMPLETED
    result.return_value = value
    return result


class GroupedSweeper(BasicSweeper):
    """The basic sweeper, refusing a `hydra.sweep.subdir` that would put two jobs into one folder,
    composing one job per group of jobs that differ only in `seed` to check them, and saying what a
    sweep started again in its folder finds there (`says_what_resumes`)."""

    def sweep(self, arguments: list[str]) -> Any:
        """Check every job (`check_jobs`) before the basic sweeper writes the sweep's multirun.yaml
        and launches them."""
        params = self._parse_config() + list(arguments)
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(
            params
        )
        self.check_jobs([job for batch in self.split_arguments(parsed, self.max_batch_size) for job in batch])
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job was checked before the sweep began (`check_jobs`)."""

    def check_jobs(self, overrides: Sequence[Sequence[str]]) -> None:
        """Refuse, in one line with exit status 2 and before anything is written, a sweep whose jobs
        would share a folder, and one started into the folder of another sweep: a job folder holding
        a finished or interrupted run of another config (unless overwrite=true replaces them), or job
        folders this sweep does not name. Otherwise say what a sweep started again finds there."""
        from src.errors import ConfigValueError
        from src.pipeline.run import OTHER, config_changes
        from src.values import parse_bool

        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)["subdir"]
        if shared := shared_job_folder(str(subdir), overrides):
            one, other = (overrides[index] for index in shared)  # named by the overrides they differ in
            first, second = (
                " ".join(o for o in a if o not in b) or "-" for a, b in ((one, other), (other, one))
            )
            refuse(
                f"hydra.sweep.subdir={subdir} puts the jobs [{first}] and [{second}] into one folder: name "
                "each job's folder apart, e.g. with ${hydra.job.num} (the default) or with every swept key"
            )
        groups: dict[tuple[str, ...], list[Job]] = {}
        for index, job in enumerate(overrides):
            rest, seed = split_seed(job)
            groups.setdefault(rest, []).append((index, job, seed))
        loader = self.hydra_context.config_loader
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        states, folders, replace = [], set(), False
        for jobs in groups.values():
            template = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(jobs[0][1]))
            try:
                replace = parse_bool("overwrite", template.get("overwrite", False))
            except ConfigValueError as error:
                refuse(str(error))
            for index, (state, run_dir) in earlier_states(template, jobs).items():
                if state == OTHER and not replace:
                    task = OmegaConf.to_container(template, resolve=False)
                    task.pop("hydra", None)
                    seed = next(seed for number, _, seed in jobs if number == index)
                    keys = config_changes(run_dir, {**task, "seed": seed})
                    refuse(
                        f"{sweep_dir} holds another sweep's jobs: job #{index} ({run_dir}) ran with other "
                        f"settings ({', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}); nothing was "
                        "changed: start this sweep in a new folder (leave hydra.sweep.dir out: each sweep "
                        "gets its own), run the earlier command to resume that sweep, or give "
                        "overwrite=true to replace its jobs"
                    )
                states.append(state)
                folders.add(run_dir)
        if foreign := foreign_jobs(sweep_dir, folders):
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            refuse(
                f"{sweep_dir} holds {len(foreign)} job folder(s) this sweep does not name ({shown}): it is "
                "another sweep's folder, and its summary would count them; nothing was changed: start this "
                "sweep in a new folder (leave hydra.sweep.dir out), or name every job of the earlier sweep"
            )
        says_what_resumes(str(sweep_dir), states, replace)


def refuse(problem: str) -> NoReturn:
    """A sweep refused before it began: one line, exit status 2."""
    print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(2)


class BatchedLauncher(Launcher):
    def __init__(
        self,
        max_members: int = 1000,
        executor: str | None = None,
        submitit: dict | None = None,
        detach: bool = False,
    ) -> None:
        self.max_members = max_members
        # None: chunks train one after another in this process; "local" or "slurm": each chunk is
        # a submitit job with the `submitit` parameters (timeout_min, slurm_partition, gpus_per_node, ...).
        if executor not in (None, "local", "slurm"):
            raise ValueError(f"hydra.launcher.executor must be null, local or slurm, got {executor!r}")
        if detach and executor != "slurm":
            raise ValueError(
                f"hydra.launcher.detach=true needs hydra.launcher.executor=slurm (got {executor}): "
                "a local chunk ends with the process that started it"
            )
        self.executor, self.detach = executor, detach
        self.submitit = dict(submitit or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[str, ...], list[Job]] = {}
        for offset, overrides in enumerate(job_overrides):
            rest, seed = split_seed(overrides)
            groups.setdefault(rest, []).append((initial_job_idx + offset, overrides, seed))
        if problem := self.settings_problem(groups):  # before anything is written or trained
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: dict[int, JobReturn] = {}
        for rest, jobs in groups.items():
            returns.update(self._launch_group(" ".join(filter_overrides(rest)) or "the base config", jobs))
        return [returns[index] for index in sorted(returns)]

    def settings_problem(self, groups: dict[tuple[str, ...], list[Job]]) -> str | None:
        """What in the launcher's settings or the jobs' seeds would fail only after training: a
        chunk size below 1, a job without a seed among jobs trained together."""
        size = self.max_members
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            return (
                f"hydra.launcher.max_members must be a whole number >= 1 (seeds per chunk), got "
                f"{size!r}: e.g. hydra.launcher.max_members=250"
            )
        for jobs in groups.values():
            if len(jobs) > 1 and any(seed is None for *_, seed in jobs):
                return (
                    "seed=null in a batched sweep: each seed trained together needs its own seed; give "
                    "the seeds (e.g. seed='range(0,4)'), or drop hydra/launcher=batched"
                )
        return None

    def _launch_group(self, label: str, jobs: list[Job]) -> dict[int, JobReturn]:
        from src.pipeline.batched import batching_problem
        from src.pipeline.run import kept, read_run

        template = self.hydra_context.config_loader.load_sweep_config(self.config, list(jobs[0][1]))
        returns: dict[int, JobReturn] = {}
        states = earlier_states(template, jobs)
        for index, overrides, _ in jobs:  # finished in an earlier start of the sweep: skipped
            state, run_dir = states[index]
            if kept(state, template):
                returns[index] = completed(overrides, read_run(run_dir).metrics.get("val/loss"))
        jobs = [job for job in jobs if job[0] not in returns]
        if not jobs:
            return returns
        problem = "a single job" if len(jobs) == 1 else batching_problem(template)
        if problem:
            log.warning("Batched launcher: running %d job(s) [%s] one by one: %s", len(jobs), label, problem)
            for index, overrides, seed in jobs:
                returns[index] = self._run_one(template, overrides, seed, index)
            return returns
        chunks = [jobs[start : start + self.max_members] for start in range(0, len(jobs), self.max_members)]
        if self.executor is None:
            from src.errors import UserError

            for chunk in chunks:
                try:
                    returns.update(self.train_chunk(template, label, chunk))
                except UserError as error:  # a bad config value: one line, exit status 2, as a single run
                    print(f"error: {error}", file=sys.stderr)
                    raise SystemExit(2) from None
            return returns
        import submitit

        from src.analysis.sweep import write_summary
        from src.pipeline.cluster import detach, record_submission, wait_for, watch_queue

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        # A chunk that reaches its time limit is requeued (`checkpoint`) this many times at most.
        timeouts = {"slurm_max_num_timeout": 3} if self.executor == "slurm" else {}
        executor = submitit.AutoExecutor(
            folder=sweep_dir / ".submitit" / "%j", cluster=self.executor, **timeouts
        )
        executor.update_parameters(**self.submitit)
        watch_queue()
        state = Singleton.get_state()
        submitted = [executor.submit(self, template, label, chunk, state) for chunk in chunks]
        log.info(
            "Batched launcher: %d chunk(s) of [%s] submitted to submitit (%s): job(s) %s",
            len(chunks),
            label,
            self.executor,
            ", ".join(job.job_id for job in submitted),
        )
        record_submission(
            sweep_dir,
            {
                str(job_folder(template, index, seed, sweep_dir).relative_to(sweep_dir)): (
                    overrides,
                    job.job_id,
                )
                for chunk, job in zip(chunks, submitted, strict=True)
                for index, overrides, seed in chunk
            },
        )
        if self.detach:
            detach(executor, sweep_dir, [job.job_id for job in submitted], len(jobs), write_summary)
            results = [None] * len(chunks)
        else:
            labels = [f"Chunk of jobs #{chunk[0][0]}-#{chunk[-1][0]}" for chunk in chunks]
            results = wait_for(submitted, labels)
        for chunk, result in zip(chunks, results, strict=True):
            # A chunk that ended without a result (cancelled, killed): its jobs' folders say so.
            returns.update(result or {index: completed(overrides, None) for index, overrides, _ in chunk})
        return returns

    def __call__(
        self, template: DictConfig, label: str, chunk: list[Job], state: Any
    ) -> dict[int, JobReturn]:
        """One chunk in a submitit job (another process or machine): Hydra's state, then the chunk,
        stopped by SIGTERM (preemption, scancel, a requeue) as a single run is."""
        from src.pipeline.process import interrupt_on_signals

        Singleton.set_state(state)
        setup_globals()
        with interrupt_on_signals():
            return self.train_chunk(template, label, chunk)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit, at a chunk's time limit: the same chunk again, requeued (it resumes from its
        last.ckpt, and writes only the job folders it has not written)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def train_chunk(self, template: DictConfig, label: str, chunk: list[Job]) -> dict[int, JobReturn]:
        """Train the seeds of `chunk` together, finish them together and write their job folders
        (those a resumed sweep has not written already). A SIGTERM or SIGINT (`Interrupted`) leaves
        error.txt in the folder of each member not written, saying how to resume from the chunk's
        last.ckpt, and stops the sweep."""
        from src.files import flushed_together
        from src.pipeline.batched import member_jobs, train_members
        from src.pipeline.config import MemberConfigs
        from src.pipeline.process import Interrupted
        from src.pipeline.run import kept, read_run, run_job

        configs = MemberConfigs(self._task_config(template, None), [seed for _, _, seed in chunk])
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        chunk_dir = sweep_dir / "batched" / f"{chunk[0][0]}-{chunk[-1][0]}"
        # A requeued chunk keeps the job folders it had written.
        states = earlier_states(template, chunk)
        finished = {index for index, (state, _) in states.items() if kept(state, template)}
        log.info("Batched launcher: training %d seeds of [%s] together", len(chunk), label)
        try:
            members = train_members(configs, chunk_dir)
        except Interrupted as interrupt:
            unwritten = [member for member, (index, *_) in enumerate(chunk) if index not in finished]
            self._interrupted(interrupt, template, configs, chunk, unwritten, chunk_dir)
            raise
        started = time.perf_counter()
        # Hydra's view of the current job (what ${hydra:...}, ${job_name:...} resolve) is set once and
        # then pointed at each member in place: a thousand copies of it would cost seconds.
        HydraConfig.instance().set_config(self._set_job(template, chunk[0][1], chunk[0][0]))
        returns, pending = {}, []
        for member, (index, overrides, _) in enumerate(chunk):
            if index in finished:
                run_dir = states[index][1]
                returns[index] = completed(overrides, read_run(run_dir).metrics.get("val/loss"))
            else:
                returns[index], run_dir, record = self._job_folder(
                    template, sweep_dir, configs, member, overrides, index
                )
                pending.append((member, index, run_dir, record))
        jobs = member_jobs(
            members,
            configs,
            [member for member, *_ in pending],
            [run_dir for _, _, run_dir, _ in pending],
            [record for *_, record in pending],
        )
        written = 0
        try:
            with flushed_together():  # one flush to the disk for the chunk's folders, not one per file
                for job, (member, index, run_dir, _) in zip(
                    jobs, self._progress(pending, f"writing {len(pending)} job folders"), strict=True
                ):
                    self._set_job(HydraConfig.instance().cfg, chunk[member][1], index)  # its W&B run's name
                    returns[index].return_value = run_job(
                        job, configs[member], run_dir, in_sweep=True, quiet=True, earlier=states[index][0]
                    )
                    written += 1
        except Interrupted as interrupt:  # the member being written, and those after it
            self._interrupted(
                interrupt, template, configs, chunk, [m for m, *_ in pending[written:]], chunk_dir
            )
            raise
        finished = time.perf_counter() - started
        # The chunk's phases, for benchmarks and for a user asking where a sweep's time went.
        (chunk_dir / "timing.json").write_text(
            json.dumps(
                {
                    "members": len(chunk),
                    "train_s": members.seconds,
                    "finish_s": finished,
                    "written": len(pending),
                }
            )
        )
        log.info(
            "Batched launcher: trained %d seeds in %.1f s, finished and wrote %d job folders in %.1f s",
            len(chunk),
            members.seconds,
            len(pending),
            finished,
        )
        return returns

    def _interrupted(
        self,
        interrupt: Any,
        template: DictConfig,
        configs: Any,
        chunk: list[Job],
        members: list[int],
        chunk_dir: Path,
    ) -> None:
        """The job folder of each of the chunk's `members` (not written when `interrupt` stopped the
        chunk), with error.txt saying so and how to resume: the sweep again, from the chunk's
        last.ckpt."""
        from src.pipeline.run import Run, how_to_resume

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        resume = how_to_resume(chunk_dir / "last.ckpt", sweep_dir)
        for member in members:
            index, overrides, _ = chunk[member]
            _, run_dir, record = self._job_folder(template, sweep_dir, configs, member, overrides, index)
            run = Run(configs[member], run_dir)
            run.write_record(record)  # a job folder of this sweep, which its summary counts
            run.interrupted(interrupt, resume)
        log.error(
            "Batched launcher: chunk %s %s; error.txt in the folders of its %d unfinished job(s)",
            chunk_dir.name,
            interrupt,
            len(members),
        )

    @staticmethod
    def _progress(items: list, description: str) -> Any:
        """`items`, with one progress bar over them on a terminal (none in a log file)."""
        from tqdm import tqdm

        return tqdm(items, desc=description, unit="job", disable=not sys.stderr.isatty(), leave=False)

    @staticmethod
    def _task_config(template: DictConfig, seed: int | None) -> DictConfig:
        """A job's config without the hydra node, as its task function receives it."""
        task = OmegaConf.masked_copy(template, [key for key in template if key != "hydra"])
        with read_write(task), open_dict(task):
            task.seed = seed
        return task

    @staticmethod
    def _set_job(template: DictConfig, overrides: Sequence[str], index: int) -> DictConfig:
        """Point the template's hydra node at this job (Hydra resolves job folders from it)."""
        with (
            read_write(template.hydra.overrides),
            read_write(template.hydra.job),
            open_dict(template.hydra.job),
        ):
            template.hydra.overrides.task = list(overrides)
            template.hydra.job.id = index
            template.hydra.job.num = index
        return template

    def _run_one(
        self, template: DictConfig, overrides: Sequence[str], seed: int | None, index: int
    ) -> JobReturn:
        job = self._set_job(copy.deepcopy(template), overrides, index)
        with read_write(job), open_dict(job):
            job.seed = seed
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=job,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    @staticmethod
    def _job_folder(
        template: DictConfig,
        sweep_dir: Path,
        configs: Any,
        member: int,
        overrides: Sequence[str],
        index: int,
    ) -> tuple[JobReturn, Path, dict[str, str]]:
        """A batched member's job folder, its JobReturn and its .hydra/ files (what Hydra's own job
        runner records for the jobs it runs: the composed config and the overrides); the folder is
        resolved with the member's own seed and number (hydra.sweep.subdir=${seed})."""
        cfg = configs[member]
        run_dir = job_folder(template, index, cfg.seed, sweep_dir)
        result = JobReturn(overrides=list(overrides), cfg=cfg, working_dir=str(Path.cwd()))
        result.status = JobStatus.COMPLETED
        record = {
            "config.yaml": configs.unresolved_yaml(member),
            "overrides.yaml": yaml.safe_dump(list(overrides)),
        }
        return result, run_dir, record

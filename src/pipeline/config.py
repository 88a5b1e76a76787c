"""The config side of a run: the resolvers its YAML uses, composition outside @hydra.main, building
objects from `_target_` entries, checks made before anything is built, and saving."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from src.errors import ConfigValueError
from src.pipeline.targets import CONFIG_DIR, check_targets, command_line_targets
from src.values import parse_bool

# Overrides that say where a job writes, not what it computes.
LOCATION_SETTINGS = ("paths.",)
# Overrides that leave a job's setting unchanged: its seed, its location, and how its sweep's
# summary compares the configurations (conf/config.yaml, `comparison`).
NOT_SETTINGS = ("seed=", "comparison.", *LOCATION_SETTINGS)
# W&B keeps names and groups of at most 128 characters.
WANDB_NAME_LENGTH = 128


def configuration_key(overrides: list[str]) -> str:
    """What a job's configuration is apart from its seed: its command-line overrides without the
    seed and `paths.*`. Jobs with the same key are one setting over seeds (a sweep summary's
    group, a W&B group)."""
    return " ".join(o for o in overrides if not o.startswith(NOT_SETTINGS)) or "(base config)"


def _bounded(text: str) -> str:
    """`text` cut to W&B's length, a hash of the whole keeping cut texts apart."""
    if len(text) <= WANDB_NAME_LENGTH:
        return text
    return f"{text[: WANDB_NAME_LENGTH - 10]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _job_overrides() -> list[str] | None:
    """The current job's command-line overrides; None outside a Hydra job."""
    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def job_name(name: str) -> str:
    """A job's W&B run name: the config's `name` and what the command line changed, seed included,
    so that the jobs of a sweep are told apart by what differs."""
    overrides = [o for o in _job_overrides() or [] if not o.startswith(LOCATION_SETTINGS)]
    return _bounded(" ".join([name, *overrides]))


def job_group() -> str | None:
    """A sweep job's W&B group: the sweep folder and its configuration apart from the seed, so
    that each setting of a sweep is one group over its seeds; None for a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return _bounded(
        f"{Path(str(HydraConfig.get().sweep.dir)).name} {configuration_key(_job_overrides() or [])}"
    )


def path_safe(text: str) -> str:
    """`text` as one file-name component: path separators and anything but letters, digits and
    `._=,+-` become `_`, and no `..` remains, so a name can never place a folder elsewhere."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", str(text))
    return re.sub(r"\.{2,}", "_", safe).strip(".") or "_"


def register_resolvers() -> None:
    """The `${run_id:}`, `${job_name:...}`, `${job_group:}`, `${class_name:...}`, `${path_safe:...}`
    and `${reciprocal:...}` resolvers of conf/. Every entry point calls this before Hydra composes
    its config (idempotent)."""
    # The pid and a random suffix keep two jobs started in the same second out of each other's folders.
    OmegaConf.register_new_resolver(
        "run_id", lambda: f"{os.getpid()}{secrets.token_hex(2)}", use_cache=True, replace=True
    )
    OmegaConf.register_new_resolver("job_name", job_name, replace=True)
    OmegaConf.register_new_resolver("job_group", job_group, replace=True)
    OmegaConf.register_new_resolver("class_name", lambda target: str(target).rsplit(".", 1)[-1], replace=True)
    OmegaConf.register_new_resolver("path_safe", path_safe, replace=True)
    OmegaConf.register_new_resolver("reciprocal", lambda value: 1.0 / float(value), replace=True)


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python -m src.run <overrides>` would get, composed in-process, with Hydra's
    runtime set up as @hydra.main sets it (so `${hydra:...}` resolves) and `output_dir` as the run
    folder: for calling the pipeline from Python (the tests, the benchmarks)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


# The type of each value a researcher types most (null allowed where the key says so) and an
# example: checked before anything is built, so that `lr=abc` is one line naming the key.
TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "seed": ((int, type(None)), "0"),
    "model.latent_dim": ((int,), "16"),
    "model.optimizer.lr": ((int, float), "1e-3"),
    "model.beta": ((int, float), "1.0"),
    "data.batch_size": ((int,), "128"),
    "trainer.max_epochs": ((int,), "10"),
    "trainer.max_steps": ((int,), "-1"),
}


# Every yes-or-no setting of the configs (tests/unit/test_configs.py checks that conf/ has no other).
BOOLEANS = (
    "test",
    "figures",
    "print_config",
    "resume_in_place",
    "overwrite",
    "compile",
    "compile_members",
    "fuse_member_matmuls",
    "ood.enabled",
    "ood.plots",
    "model.standardize_inputs",
    "model.optimizer.fused",
    "data.download",
    "trainer.deterministic",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def check_booleans(cfg: DictConfig) -> None:
    """Each key of BOOLEANS that the config has holds a boolean (`parse_bool`), set as one."""
    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            with read_write(cfg), open_dict(cfg):
                OmegaConf.update(cfg, key, parse_bool(key, value), force_add=False)


def check_types(cfg: DictConfig) -> None:
    """Each key of TYPES that the config has holds a value of its type."""
    for key, (types, example) in TYPES.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, types) or isinstance(value, bool):
            wanted = " or ".join("null" if kind is type(None) else kind.__name__ for kind in types)
            raise ConfigValueError(f"{key} must be {wanted}, got {value!r}: e.g. {key}={example}")


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def misspelt_keys(arguments: list[str]) -> list[str]:
    """One line for each `+key=value` argument that names a key the config has (Hydra refuses to
    add it), and for each `key=value` argument that names no key of the composed config, with the
    nearest keys there are (Hydra's own message only suggests adding the key with `+`)."""
    overrides = [arg for arg in arguments if "=" in arg and not arg.startswith(("-", "+", "~", "hydra"))]
    groups = [arg for arg in overrides if (CONFIG_DIR / arg.split("=", 1)[0]).is_dir()]
    try:
        # A group swept over (model=ca,vae) composes with its first option.
        cfg = compose_config([group.split(",")[0] for group in groups], Path.cwd())
    except Exception:  # the groups themselves are wrong: Hydra's own message said so
        return []
    known = _dotted_keys(OmegaConf.to_container(cfg, resolve=False))
    lines = []
    for addition in (arg for arg in arguments if arg.startswith("+") and not arg.startswith("++")):
        key = addition[1:].split("=", 1)[0]
        if "=" in addition and OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            lines.append(f"error: {key} is already a config key: set it with {key}=... (no +)")
    for override in overrides:
        key = override.split("=", 1)[0]
        if override in groups or OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            continue
        nearest = difflib.get_close_matches(key, known, n=2, cutoff=0.7)
        hint = f"did you mean {' or '.join(nearest)}?" if nearest else "see `python -m src.run --cfg job`"
        lines.append(f"error: {key} is not a config key; {hint} (+{key}=... would add it as a new key)")
    return lines


# The config groups (conf/<group>/), and the top-level keys: conf/config.yaml's and the groups.
CONFIG_GROUPS = frozenset(path.name for path in CONFIG_DIR.iterdir() if path.is_dir())
TOP_LEVEL_KEYS = (
    frozenset({*yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()), "hydra"}) | CONFIG_GROUPS
)
# The precisions the evaluations after training run in (their float32 data, the models' own dtype);
# Lightning's aliases included.
PRECISIONS = ("32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16")


def check_unread_keys(cfg: DictConfig) -> None:
    """Refuse a top-level key that nothing reads: neither the project's (TOP_LEVEL_KEYS) nor one an
    interpolation names (an experiment's own, e.g. `near_ood`); and `paths.run_dir` set by hand (the
    run sets it to its folder)."""
    raw = repr(OmegaConf.to_container(cfg, resolve=False))
    for key in cfg:
        if key not in TOP_LEVEL_KEYS and not re.search(r"\$\{" + re.escape(str(key)) + r"\b", raw):
            raise ConfigValueError(
                f"{key} is read by nothing (not a key of conf/config.yaml or a config group, and no "
                f"interpolation names it): drop +{key}=..., or see python -m src.run --cfg job"
            )
    if any(o.lstrip("+").startswith("paths.run_dir=") for o in _job_overrides() or []):
        raise ConfigValueError(
            "paths.run_dir is the run's own folder, set by the run: choose the folder with "
            "hydra.run.dir=<folder> (a sweep's with hydra.sweep.dir=<folder>)"
        )


def check_trainer(trainer: DictConfig) -> None:
    """Refuse trainer settings that would fail, or mislead, only after training."""
    precision = trainer.get("precision")
    if precision not in PRECISIONS:
        raise ConfigValueError(
            f"trainer.precision={precision} cannot run the evaluations after training (they take "
            "float32 data): choose trainer.precision=32-true, bf16-mixed or 16-mixed"
        )
    if trainer.get("limit_train_batches") == 0:
        raise ConfigValueError(
            "trainer.limit_train_batches=0 trains nothing, and the test metrics would be an untrained "
            "model's: give a number of batches >= 1 or a fraction in (0, 1] (null: all)"
        )


def check_config(cfg: DictConfig) -> None:
    """Refuse untrusted targets, config values of the wrong type, and values that would be
    silently ignored."""
    check_trusted(cfg)
    check_booleans(cfg)
    check_types(cfg)
    check_unread_keys(cfg)
    check_trainer(cfg.trainer)
    if cfg.trainer.get("callbacks") is not None:
        raise ConfigValueError(
            "trainer.callbacks is not used: the run's callbacks come from the `callbacks` group. Add one "
            "with +callbacks.<name>._target_=<class> (e.g. pytorch_lightning.callbacks.LearningRateMonitor)."
        )
    if cfg.trainer.get("max_epochs") == 0:
        raise ConfigValueError(
            "trainer.max_epochs=0 trains nothing: give at least 1 (or -1 with trainer.max_steps), or "
            "evaluate a saved model with python -m src.eval ckpt_path=<run>/checkpoints/last.ckpt."
        )
    batch_size = cfg.data.get("batch_size")  # its type is checked above
    if batch_size is not None and batch_size < 1:
        raise ConfigValueError(f"data.batch_size must be a whole number >= 1, got {batch_size!r}")
    if cfg.trainer.get("logger") is not None:
        raise ConfigValueError(
            "trainer.logger is not used: choose loggers with logger=csv|tensorboard|wandb|none."
        )


@contextlib.contextmanager
def constructor_errors() -> Iterator[None]:
    """Within the block, Hydra's instantiation errors are re-raised as the constructor's own error
    (e.g. a bad config value), its message intact instead of Hydra's nested wrappers."""
    try:
        yield
    except InstantiationException as error:
        cause: BaseException = error
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise cause from None


def check_trusted(config: DictConfig | dict, source: str = "the config") -> None:
    """Every `_target_` in `config` is one the project builds (src/pipeline/targets.py), or one
    that this job's own command line names."""
    check_targets(config, command_line_targets(_job_overrides() or []), source)


def build(config: DictConfig | dict, **kwargs: Any) -> Any:
    """hydra.utils.instantiate of a config whose targets are trusted (`check_trusted`), with the
    constructor's own errors (`constructor_errors`)."""
    check_trusted(config)
    with constructor_errors():
        return instantiate(config, **kwargs)


def load_run_config(
    path: Path, sections: Sequence[str] = ("model", "data"), builds: bool = True
) -> DictConfig:
    """A run folder's config.yaml, refused in one line when it is not a readable config with the
    `sections` to build from (each with its `_target_`), or, when the caller `builds` from it, names
    a `_target_` the project does not build: the folder is data. A reader that builds nothing (a
    sweep summary reading settings) reads any target as the text it is."""
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, OmegaConfBaseException) as error:
        problem = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        raise ConfigValueError(
            f"{path} is not a readable config ({problem}); restore it or train the run again."
        ) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigValueError(f"{path} is not a mapping of config keys; restore it or train the run again.")
    if lacking := [
        section
        for section in sections
        if not isinstance(cfg.get(section), DictConfig) or "_target_" not in cfg[section]
    ]:
        raise ConfigValueError(
            f"{path} lacks its {' and '.join(lacking)} section (truncated?); restore it or train the run "
            "again."
        )
    if builds:
        check_targets(cfg, source=str(path))
    return cfg


def config_yaml(values: dict[str, Any]) -> str:
    """Plain config values as YAML, with libyaml's emitter (OmegaConf's pure-Python one is too slow
    for a thousand job folders: docs/performance.md)."""
    return yaml.dump(values, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def _interpolated_keys(values: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a raw (unresolved) config container whose values interpolate."""
    if isinstance(values, dict):
        return [
            key for name, value in values.items() for key in _interpolated_keys(value, f"{prefix}{name}.")
        ]
    key = prefix.removesuffix(".")
    if isinstance(values, str) and "${" in values:
        return [key]
    if isinstance(values, list) and "${" in repr(values):
        return [key]
    return []


# Resolvers whose value is the same for every job of a sweep (the environment, the start time).
JOB_INDEPENDENT_RESOLVERS = ("oc.env", "now")


def _job_dependent(keys: Sequence[str], raw: dict[str, Any]) -> list[str]:
    """Of the interpolated `keys`, those whose value may differ between jobs that differ only in
    `seed` (and in their folder, `paths.run_dir`): an interpolation that names the seed or the
    folder, calls a resolver that reads the job (job_name, hydra:, ...), or names such a key, closed
    transitively. Conservative: a key named alike is counted in."""

    def text(key: str) -> str:
        node: Any = raw
        for part in key.split("."):
            node = node[part]
        return repr(node)

    texts = {key: text(key) for key in keys}
    independent = "|".join(re.escape(name) for name in JOB_INDEPENDENT_RESOLVERS)
    resolver = re.compile(r"\$\{(?!(?:" + independent + r"):)[\w.]+:")
    dependent = {
        key for key, value in texts.items() if "seed" in value or "run_dir" in value or resolver.search(value)
    }
    while True:
        names = {name for key in dependent for name in (key, key.rsplit(".", 1)[-1])}
        grown = {key for key, value in texts.items() if any(name in value for name in names)} | dependent
        if grown == dependent:
            return [key for key in keys if key in dependent]
        dependent = grown


# An interpolation of a plain key (`${paths.run_dir}`): no resolver, no relative or nested key.
_PLAIN_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _resolved_value(values: dict[str, Any], key: str) -> Any:
    """The value at dotted `key` of resolved config values (KeyError where there is none)."""
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


class MemberConfigs(Sequence[DictConfig]):
    """The configs of jobs that differ only in `seed` (a batched chunk's members), without a config
    object per job: item i is the one task config switched to seed i (so use it before asking for
    the next), `resolved(i)` its resolved values, from one full resolution plus the keys that depend
    on the job, and `unresolved_yaml(i)` its unresolved YAML (a thousand full resolutions, copies
    and dumps of a large config cost more than training the members)."""

    def __init__(self, task: DictConfig, seeds: Sequence[int | None]) -> None:
        self.task, self.seeds = task, list(seeds)
        self._raw = OmegaConf.to_container(task, resolve=False)
        self._job_dependent = _job_dependent(_interpolated_keys(self._raw), self._raw)
        self._resolved: dict[str, Any] | None = None
        self._unresolved_yaml: tuple[str, str] | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> DictConfig:  # type: ignore[override]
        if not -len(self.seeds) <= index < len(self.seeds):
            raise IndexError(index)
        with read_write(self.task), open_dict(self.task):
            self.task.seed = self.seeds[index]
        return self.task

    def unresolved_yaml(self, index: int) -> str:
        """Job i's config as written, interpolations kept (Hydra's .hydra/config.yaml): one dump,
        whose top-level `seed` line is each job's."""
        if self._unresolved_yaml is None:
            lines = config_yaml({**self._raw, "seed": None}).splitlines(keepends=True)
            if lines.count("seed: null\n") != 1:  # the seed line is not to be found: dump each job's
                return config_yaml({**self._raw, "seed": self.seeds[index]})
            at = lines.index("seed: null\n")
            self._unresolved_yaml = ("".join(lines[:at]), "".join(lines[at + 1 :]))
        before, after = self._unresolved_yaml
        seed = self.seeds[index]
        return f"{before}seed: {'null' if seed is None else int(seed)}\n{after}"

    def resolved(self, index: int) -> dict[str, Any]:
        """Job i's resolved config (the task config's current values of every other key)."""
        task = self[index]
        if self._resolved is None:
            self._resolved = OmegaConf.to_container(task, resolve=True)
            return self._resolved
        self._resolved["seed"] = self.seeds[index]
        done: set[str] = set()
        for key in self._job_dependent:
            *parents, name = key.split(".")
            node = self._resolved
            for parent in parents:
                node = node[parent]
            node[name] = self._job_value(task, key, done)
            done.add(key)
        return self._resolved

    def _job_value(self, task: DictConfig, key: str, done: set[str]) -> Any:
        """The job-dependent `key`'s resolved value: its interpolation filled in from the values
        already resolved for this job when it names only such plain keys (`${paths.run_dir}/x`, most
        of them), else resolved by OmegaConf (a resolver, a relative or a nested interpolation)."""
        *parents, name = key.split(".")
        parent: Any = task
        for part in parents:
            parent = parent[part]
        raw = OmegaConf.to_container(parent, resolve=False)[name] if isinstance(parent, DictConfig) else None
        filled = self._filled(raw, done) if isinstance(raw, str) else None
        if filled is not None:
            return filled[0]
        value = OmegaConf.select(task, key)
        resolved = isinstance(value, DictConfig | ListConfig)
        return OmegaConf.to_container(value, resolve=True) if resolved else value

    def _filled(self, raw: str, done: set[str]) -> tuple[Any] | None:
        """`raw` with its plain interpolations filled in from this job's resolved values, in a
        one-tuple; None where it needs OmegaConf (anything else, or a key not yet resolved)."""
        names = _PLAIN_INTERPOLATION.findall(raw)
        if "${" in _PLAIN_INTERPOLATION.sub("", raw) or any(
            each != "seed" and each not in done and each in self._job_dependent for each in names
        ):
            return None
        try:
            values = [_resolved_value(self._resolved, each) for each in names]
        except (KeyError, TypeError):
            return None
        if any(isinstance(value, dict | list) for value in values):
            return None
        if len(names) == 1 and raw == f"${{{names[0]}}}":
            return (values[0],)  # the value itself, of its own type
        texts = iter(str(value) for value in values)
        return (_PLAIN_INTERPOLATION.sub(lambda _: next(texts), raw),)

"""Entry point: `python -m src.run [group=option ...] [key=value ...]`.

Composes conf/config.yaml, trains, validates and tests one model, and leaves a self-contained run
folder: config.yaml (resolved), metrics.json, history.csv, figures (PNG), checkpoints/ and logs."""

from __future__ import annotations

import csv
import ctypes
import json
import logging
import os
import random
import secrets
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger, WandbLogger

from src import ood, plots
from src.census import outcome_metrics
from src.models import OUTPUT_ACTIVATIONS, ReconstructionModel, VariationalAutoencoder


def wandb_is_offline() -> bool:
    """True unless the user has configured W&B: WANDB_MODE=online, an API key, or `wandb login`."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode != "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return not (os.environ.get("WANDB_API_KEY") or logged_in)


log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
POSTERIOR_IMAGES = 2000
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

# Lightning's own use of a deprecated torch API; nothing a user can act on.
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")

# The pid and a random suffix keep two jobs started in the same second out of each other's folders.
OmegaConf.register_new_resolver(
    "run_id", lambda: f"{os.getpid()}{secrets.token_hex(2)}", use_cache=True, replace=True
)
OmegaConf.register_new_resolver("wandb_offline", wandb_is_offline, replace=True)


def sweep_group() -> str | None:
    """The W&B group of a sweep's runs: the sweep folder's name; None for a single run."""
    hydra_cfg = HydraConfig.get()
    return Path(str(hydra_cfg.sweep.dir)).name if hydra_cfg.mode == RunMode.MULTIRUN else None


OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)


def drop_failing_nvml_check() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import, so that asking whether CUDA is there
    does not initialise it (which would poison fork). Where NVML cannot load (no NVIDIA driver), torch
    then tries to load it on every torch.cuda.is_available(), fails, and falls back to the CUDA
    runtime's check anyway; Adam asks once per step. On a CPU machine with torch's default CUDA wheel
    that is 40-150 us a step for the same answer (a tenth of a small model's step), so the request is
    dropped where NVML cannot load. Elsewhere: nothing."""
    if os.environ.get(NVML_CHECK) != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ[NVML_CHECK]


# At import, right after Lightning's own import-time setting: every entry point (src.run, src.eval,
# the batched launcher, the benchmarks) imports this module before it trains.
drop_failing_nvml_check()


class History(Callback):
    """Epoch-level metrics in history.csv: kept in memory, written at most every few seconds and
    when training ends or fails, so a crash keeps what was done without O(epochs^2) rewriting.
    Adds the training throughput `train/images_per_s`: images over the seconds from the epoch's
    start to its last training batch's end (data loading included, validation excluded)."""

    def __init__(self, path: Path, write_every_s: float = 10.0) -> None:
        self.path = path
        self.write_every_s = write_every_s
        self.rows: list[dict[str, float]] = []
        self._written_at = time.monotonic()
        self._epoch_started = self._epoch_seconds = 0.0
        self._epoch_images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_images, self._epoch_seconds = 0, 0.0
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch_images += len(batch[0])
        if batch_idx + 1 >= trainer.num_training_batches:
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)  # once per epoch: queued kernels count
            self._epoch_seconds = time.perf_counter() - self._epoch_started

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **epoch_metrics(trainer)}
        if self._epoch_seconds > 0:
            row["train/images_per_s"] = self._epoch_images / self._epoch_seconds
        self.rows.append(row)
        if time.monotonic() - self._written_at > self.write_every_s:
            self.write()

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.write()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self.write()

    def write(self) -> None:
        if not self.rows:
            return
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        self._written_at = time.monotonic()


@torch.no_grad()
def write_figures(
    model: ReconstructionModel, test_images: torch.Tensor, history: list, run_dir: Path
) -> list[Path]:
    """Inputs vs reconstructions, prior samples (VAE), the bottleneck distribution (latent <= 2)
    and the loss curves."""
    model.eval()
    shown = test_images[:8].to(model.device)
    figures = [
        plots.image_rows(
            [shown, model.reconstruct(shown)], ["input", "output"], run_dir / "reconstructions.png"
        )
    ]
    if isinstance(model, VariationalAutoencoder):
        samples = model.sample(64, generator=torch.Generator().manual_seed(0))
        figures.append(plots.image_grid(samples, run_dir / "samples.png", "decoded samples z ~ N(0, I)"))
    if model.hparams.latent_dim <= 2:
        images = test_images.to(model.device)
        sigmas = None
        if isinstance(model, VariationalAutoencoder):
            codes, logvar = model.encode(images)
            sigmas = (0.5 * logvar).exp()
        else:
            codes = model.code(images)
        figures.append(plots.bottleneck_distribution(codes, run_dir / "bottleneck.png", sigmas))
    if history:
        figures.append(plots.loss_curves(history, run_dir / "loss_curves.png"))
    return figures


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python -m src.run <overrides>` would get, composed in-process, with Hydra's
    runtime set up as @hydra.main sets it (so `${hydra:...}` resolves) and `output_dir` as the run
    folder: for calling `train` from Python (the tests, the benchmark's in-process path)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def build(config: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, re-raising a constructor's own error (e.g. a bad config value) with
    its message intact instead of Hydra's nested wrappers."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        cause: BaseException = error
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise cause from None


def epoch_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The trainer's latest epoch-level train/val/test metrics, with Lightning's suffix removed."""
    return {
        key.removesuffix("_epoch"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(("train/", "val/", "test/")) and not key.endswith("_step")
    }


def save_config(cfg: DictConfig, path: Path, resolve: bool = True) -> None:
    """The config as YAML, written with libyaml's emitter (OmegaConf's pure-Python one costs tens
    of milliseconds a file: too slow for a thousand job folders)."""
    container = OmegaConf.to_container(cfg, resolve=resolve)
    path.write_text(
        yaml.dump(container, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
    )


def seeded_model(cfg: DictConfig) -> ReconstructionModel:
    """Seed everything (unless seed is null), then build the model: its initial weights are a
    function of the seed alone, in every training path."""
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return build(cfg.model)


@torch.no_grad()
def evaluation_extras(
    model: ReconstructionModel, datamodule: pl.LightningDataModule, run_dir: Path
) -> dict[str, Any]:
    """Results beyond the test metrics: the census outcome on the 2x2 images; on the line images,
    report 000's sigmoid-vs-Heaviside comparison; for the VAE, its posterior statistics on the
    training set."""
    model.eval()
    extras: dict[str, Any] = {}
    if datamodule.name == "lines2x2":
        extras.update(outcome_metrics(model, datamodule.images("test")))
    if datamodule.name == "lines":
        extras.update(compare_output_activations(model, datamodule.images("test"), run_dir))
    if isinstance(model, VariationalAutoencoder):
        # The first POSTERIOR_IMAGES training images: enough for these statistics, cheap on MNIST.
        train_images = datamodule.images("train")[:POSTERIOR_IMAGES]
        statistics = model.posterior_statistics(train_images.to(model.device))
        extras.update({f"train/{key}": value for key, value in statistics.items()})
    return extras


def compare_output_activations(
    model: ReconstructionModel, images: torch.Tensor, run_dir: Path
) -> dict[str, float]:
    """The same trained model evaluated with sigmoid and with Heaviside outputs (report 000's
    trick): `test/<activation>/<score>` metrics and heaviside.png (inputs, sigmoid, Heaviside)."""
    configured = model.hparams.output_activation
    images = images.to(model.device)
    metrics, rows = {}, [images[:8]]
    try:
        for activation in OUTPUT_ACTIVATIONS:
            model.hparams.output_activation = activation
            scores = model.evaluation_scores(images)
            metrics.update(
                {f"test/{activation}/{name}": value.mean().item() for name, value in scores.items()}
            )
            rows.append(model.reconstruct(images[:8]))
    finally:
        model.hparams.output_activation = configured
    plots.image_rows(rows, ["input", *OUTPUT_ACTIVATIONS], run_dir / "heaviside.png")
    return metrics


def record_run(
    cfg: DictConfig,
    run_dir: Path,
    model: ReconstructionModel,
    datamodule: pl.LightningDataModule,
    metrics: dict[str, Any],
    loggers: list[Logger],
    history: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The end of every run, however it was trained: dataset extras, metrics.json, figures, and
    the final metrics and figures sent to W&B (whose run is then finished)."""
    if cfg.test:
        metrics.update(evaluation_extras(model, datamodule, run_dir))
        if cfg.get("ood") and cfg.ood.enabled:
            metrics.update(ood.evaluate(cfg.ood, model, datamodule, run_dir))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    figures = write_figures(model, datamodule.images("test"), history or [], run_dir) if cfg.figures else []
    # The figures of the extras (Heaviside comparison, OOD evaluation) go to the loggers too.
    figures += sorted(run_dir.glob("heaviside.png")) + sorted(run_dir.glob("ood_*.png"))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_metrics({key: value for key, value in metrics.items() if isinstance(value, float)})
            if figures:
                logger.log_image("figures", [str(p) for p in figures], caption=[p.stem for p in figures])
            logger.experiment.finish()
    return metrics


class RandomState(Callback):
    """Saves the python, numpy and torch random states in every checkpoint and restores them when a
    run resumes from it: the shuffling and the VAE's sampling then go on as in an uninterrupted run
    (Lightning restores weights, optimiser and loops, not the random streams)."""

    def state_dict(self) -> dict[str, Any]:
        # numpy's state as a tensor and plain numbers: torch.load(weights_only=True) refuses arrays.
        _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        random.setstate(state_dict["python"])
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (`ckpt_path`), checked before anything is built."""
    if cfg.ckpt_path is None:
        return None
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={cfg.ckpt_path} does not exist. Point it at a checkpoint of an earlier run, e.g. "
            "ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt, or drop it (ckpt_path=null) to train afresh."
        )
    return str(path)


def train(cfg: DictConfig, run_dir: Path, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train, validate and test the configured model; write the run folder; return the metrics.
    `callbacks` join the run's own (the benchmark's interleaved hand-loop steps use it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    ckpt_path = resume_path(cfg)
    model = seeded_model(cfg)
    datamodule = build(cfg.data)
    loggers = [build(logger_cfg, save_dir=str(run_dir)) for logger_cfg in cfg.logger.values()]
    history = History(run_dir / "history.csv")
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", save_last=True
    )
    trainer: pl.Trainer = build(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[history, checkpoints, RandomState(), *callbacks],
        default_root_dir=str(run_dir),
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    # Lightning trains the compiled module's original: checkpoints keep the plain parameter names.
    trainer.fit(torch.compile(model) if cfg.compile else model, datamodule=datamodule, ckpt_path=ckpt_path)
    # The first epoch pays for warm-up (allocations, caches, compilation): the median of the others.
    throughputs = [row["train/images_per_s"] for row in history.rows if "train/images_per_s" in row]
    metrics: dict[str, Any] = {
        "train/time_s": time.perf_counter() - started,
        **epoch_metrics(trainer),
        **({"train/images_per_s": statistics.median(throughputs[1:] or throughputs)} if throughputs else {}),
        **(
            {"train/peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20}
            if torch.cuda.is_initialized()
            else {}
        ),
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return test_and_record(cfg, run_dir, trainer, model, datamodule, metrics, loggers, history.rows)


def test_and_record(
    cfg: DictConfig,
    run_dir: Path,
    trainer: pl.Trainer,
    model: ReconstructionModel,
    datamodule: pl.LightningDataModule,
    metrics: dict[str, Any],
    loggers: list[Logger],
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """The test stage and everything after it, for a model just trained (src.run) or loaded from a
    checkpoint (src.eval): one code path, so every post-test evaluation reaches both."""
    if cfg.test:
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics.update(epoch_metrics(trainer))
    if not trainer.is_global_zero:
        return metrics
    return record_run(cfg, run_dir, model, datamodule, metrics, loggers, history)


def log_summary_to_wandb(config: DictConfig, sweep_dir: Path, summary: dict[str, Any]) -> None:
    """A "summary" run in the sweep's W&B group: the frequency and metric tables and the chart."""
    import wandb

    settings = config.logger.wandb
    run = wandb.init(
        project=settings.project,
        group=sweep_dir.name,
        name=f"{sweep_dir.name}-summary",
        job_type="summary",
        dir=str(sweep_dir),
        mode="offline" if wandb_is_offline() else "online",
    )
    rows = [
        [
            group,
            key,
            value,
            count,
            summary["groups"][group]["frequencies"][key][value],
            *summary["groups"][group]["ci95"][key][value],
        ]
        for group, results in summary["groups"].items()
        for key, counts in results["counts"].items()
        for value, count in counts.items()
    ]
    run.log(
        {
            "summary/frequencies": wandb.Table(
                columns=["group", "result", "value", "count", "frequency", "ci95_low", "ci95_high"], data=rows
            ),
            "summary/metrics": wandb.Table(
                columns=["group", "metric", "mean", "std", "min", "max", "n"],
                data=[
                    [group, key, *stats.values()]
                    for group, results in summary["groups"].items()
                    for key, stats in results["metrics"].items()
                ],
            ),
            "summary/chart": wandb.Image(str(sweep_dir / "summary.png")),
        }
    )
    run.summary.update({"n_jobs": summary["n_jobs"], "n_failed": summary["n_failed"]})
    run.finish()


def keep_freed_memory() -> None:
    """Make glibc keep freed memory in the process (elsewhere: nothing). By default it returns large
    freed blocks, such as a conv layer's activations, to the OS, and the next training step
    page-faults them back in: a third of a conv VAE-GAN's CPU step time on a 2-core machine. The
    same as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647; the price: a process never shrinks."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def guarded(
    job: Callable[[DictConfig, Path], dict[str, Any]], cfg: DictConfig, run_dir: Path, in_sweep: bool
) -> float | None:
    """Run `job` into `run_dir`. A failure leaves error.txt beside whatever the run already wrote;
    a single run then raises, while a sweep job returns None so that the other jobs go on and the
    sweep summary counts it as failed. Returns the validation loss, which sweepers such as Optuna
    minimise."""
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    try:
        metrics = job(cfg, run_dir)
    except Exception as error:
        (run_dir / "error.txt").write_text(traceback.format_exc())
        if not in_sweep:
            raise
        log.error(
            "Job %s failed (%s: %s); see %s", run_dir, type(error).__name__, error, run_dir / "error.txt"
        )
        return None
    return metrics.get("val/loss")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    return guarded(train, cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()

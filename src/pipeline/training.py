"""Training one run: seed, build model, data, callbacks and trainer from the config, fit, and
finish the run (src/pipeline/finishing.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback

from src.errors import MissingFileError
from src.models.base import ReconstructionModel
from src.models.lightning_module import AutoencoderModule
from src.pipeline.callbacks import (
    AtomicCheckpointIO,
    History,
    LastCheckpoint,
    WhereInterrupted,
    epoch_metrics,
)
from src.pipeline.checkpoints import check_resumable
from src.pipeline.config import build, check_config, check_trusted, constructor_errors
from src.pipeline.finishing import finish
from src.pipeline.run import Run
from src.values import parse_bool


def seeded_model(cfg: DictConfig) -> ReconstructionModel:
    """Seed everything (unless seed is null), then build the model: its initial weights are a
    function of the seed alone, in every training path."""
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_model(cfg.model)


def build_model(model_cfg: DictConfig) -> ReconstructionModel:
    """The configured model. A model config that Hydra would instantiate with `_recursive_: false`
    and `_convert_: all` (every one in conf/model/) is its class called with the resolved values,
    which is what instantiate does, at a fraction of its cost (a batched chunk builds a thousand)."""
    if model_cfg.get("_recursive_") is not False or model_cfg.get("_convert_") != "all":
        return build(model_cfg)
    check_trusted(model_cfg)
    values = OmegaConf.to_container(model_cfg, resolve=True)
    model_class = get_class(values["_target_"])
    with constructor_errors():  # the net inside is built by instantiate
        return model_class(**{key: value for key, value in values.items() if not key.startswith("_")})


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (`ckpt_path`), checked before anything is built."""
    if cfg.ckpt_path is None:
        return None
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"ckpt_path={cfg.ckpt_path} does not exist. Point it at a checkpoint of an earlier run, e.g. "
            "ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt, or drop it (ckpt_path=null) to train afresh."
        )
    check_resumable(path)
    return str(path)


def train(run: Run, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train and validate the run's configured model, then finish it (test stage, evaluations, the
    run folder: src/pipeline/finishing.py); return the metrics. `callbacks` join the configured ones
    (the benchmark's interleaved hand-loop steps use it)."""
    cfg, run_dir = run.cfg, run.dir
    run.start(show=parse_bool("print_config", cfg.get("print_config", False)))
    check_config(cfg)
    ckpt_path = resume_path(cfg) or run.checkpoint_to_resume()
    model = seeded_model(cfg)
    datamodule = build(cfg.data)
    datamodule.setup()  # the data's files, read now: a missing file stops the run before training
    run.check_evaluations()
    configured = [build(callback_cfg) for callback_cfg in (cfg.get("callbacks") or {}).values()]
    trainer: pl.Trainer = build(
        cfg.trainer,
        logger=run.loggers or False,
        callbacks=[*configured, WhereInterrupted(), *callbacks],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    started = time.perf_counter()
    module = AutoencoderModule(model)
    # Lightning trains the compiled module's original: checkpoints keep the plain parameter names.
    trainer.fit(torch.compile(module) if cfg.compile else module, datamodule=datamodule, ckpt_path=ckpt_path)
    model.to(trainer.strategy.root_device)  # finished where it trained
    history = next((callback for callback in configured if isinstance(callback, History)), None)
    rows = history.rows if history is not None else []
    # The first epoch pays for warm-up (allocations, caches, compilation): the median of the others.
    throughputs = [row["train/images_per_s"] for row in rows if "train/images_per_s" in row]
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
        "precision": trainer.precision,  # what ran: Lightning swaps some (16-mixed on a CPU: bf16-mixed)
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    # The test metrics and the OOD threshold are measured on the final weights: say which file holds them.
    last = [cb for cb in configured if isinstance(cb, LastCheckpoint) and cb.holds_final_state(trainer)]
    if last:
        metrics["checkpoint"] = str(Path(last[0].best_model_path).relative_to(run_dir.resolve()))
    if not trainer.is_global_zero:
        return metrics
    return finish(run, model, datamodule, metrics, rows)

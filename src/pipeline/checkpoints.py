"""Checkpoints: the one way from a checkpoint to its run folder, its config and its model. Every
load uses torch.load(weights_only=True): a checkpoint holds tensors and plain values, never code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src.errors import MissingFileError
from src.files import write_bytes_atomic
from src.models.base import ReconstructionModel
from src.pipeline.config import build, load_run_config


class CheckpointError(MissingFileError):
    """A checkpoint that is missing, outside its run folder, or not loadable safely."""


def run_folder(ckpt_path: Path) -> Path:
    """The run folder of a checkpoint (<run>/checkpoints/<name>.ckpt), checked to hold config.yaml."""
    if not ckpt_path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path} does not exist. Point it at a saved model, e.g. "
            "ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt (or last.ckpt)."
        )
    run_dir = ckpt_path.resolve().parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"{run_dir / 'config.yaml'} not found: the model and data are rebuilt from the config.yaml of "
            f"the run that wrote the checkpoint, which lies beside the run's checkpoints/ folder. Keep "
            f"{ckpt_path.name} in <run>/checkpoints/, or copy that run's config.yaml to "
            f"{run_dir / 'config.yaml'}."
        )
    return run_dir


def run_config(ckpt_path: Path) -> DictConfig:
    """The resolved config of the run that wrote `ckpt_path`."""
    return load_run_config(run_folder(ckpt_path) / "config.yaml")


def first_line(error: BaseException) -> str:
    """An exception's first line, or its type when it has no message (an EOFError)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def load_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded without running any code from the file."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{ckpt_path} holds more than tensors and plain values, so it is not loaded (it could run "
            f"code): {first_line(error)}. Use a checkpoint written by this project."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(
            f"{ckpt_path} ({ckpt_path.stat().st_size} bytes) is truncated or not a checkpoint "
            f"({first_line(error)}); use another of the run's checkpoints, or train again."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{ckpt_path} is not a checkpoint of this project (no state_dict in it).")
    return checkpoint


# Model settings that fix the shapes of the weights: a config.yaml that differs in any of them is
# not the checkpoint's own.
STRUCTURE = ("image_shape", "latent_dim", "net")


def check_belongs(ckpt_path: Path, checkpoint: dict[str, Any], model_cfg: DictConfig) -> None:
    """Refuse a config whose model is not the one the checkpoint was trained as."""
    saved = checkpoint.get("hyper_parameters", {})
    configured = OmegaConf.to_container(model_cfg, resolve=True)
    differing = [
        key for key in STRUCTURE if key in saved and key in configured and saved[key] != configured[key]
    ]
    if differing:
        details = "; ".join(f"{key}: checkpoint {saved[key]}, config {configured[key]}" for key in differing)
        raise CheckpointError(
            f"{ckpt_path} was not trained with the config beside it ({details}): keep each checkpoint in "
            "its own run folder, with that run's config.yaml."
        )


def model_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own state dict in a checkpoint: under `model.` (the Lightning module's, and the
    batched members'), or unprefixed (written before the models were plain modules)."""
    state = checkpoint["state_dict"]
    if state and all(name.startswith("model.") for name in state):
        return {name.removeprefix("model."): value for name, value in state.items()}
    return state


def load_model(ckpt_path: Path, cfg: DictConfig | None = None) -> tuple[ReconstructionModel, dict[str, Any]]:
    """The model of `cfg.model` (default: the config of the checkpoint's run) with the checkpoint's
    weights, in evaluation mode on the CPU, and the checkpoint itself."""
    cfg = cfg if cfg is not None else run_config(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    check_belongs(ckpt_path, checkpoint, cfg.model)
    model: ReconstructionModel = build(cfg.model)
    try:
        model.load_state_dict(model_weights(checkpoint))
    except RuntimeError as error:
        missing_or_unexpected = str(error).split("\n\t")[1:3]
        raise CheckpointError(
            f"{ckpt_path} holds the weights of another model than {cfg.model._target_} "
            f"({'; '.join(part.strip()[:200] for part in missing_or_unexpected)}): keep each checkpoint "
            "in its own run folder, with that run's config.yaml."
        ) from None
    return model.eval(), checkpoint


def save_weights(
    state_dict: dict[str, torch.Tensor],
    hyper_parameters: dict[str, Any],
    path: Path,
    global_step: int,
    epoch: int,
) -> Path:
    """A checkpoint of weights trained outside a Trainer (the batched launcher's members), in
    Lightning's layout (state_dict, hyper_parameters, global_step, epoch): `load_model` reads both."""
    import pytorch_lightning as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": {f"model.{name}": value for name, value in state_dict.items()},  # as a single run's
        "hyper_parameters": hyper_parameters,
        "global_step": global_step,
        "epoch": epoch,
        "pytorch-lightning_version": pl.__version__,
    }
    save_checkpoint_file(checkpoint, path)
    return path


def save_checkpoint_file(checkpoint: dict[str, Any], path: Path) -> None:
    """`checkpoint` as the file `path`, whole or not at all: a temporary file in the same folder,
    flushed and renamed over the name (never a copy from another file system, which a kill would
    leave half-written), its size named if the disk is full."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def check_resumable(ckpt_path: Path) -> None:
    """Refuse in one line a checkpoint to resume from that does not load (a damaged last.ckpt),
    naming the file and what to do, before Lightning fails on it with a bare EOFError."""
    try:
        load_checkpoint(ckpt_path)
    except CheckpointError as error:
        raise CheckpointError(
            f"cannot resume: {error} To train afresh, move {ckpt_path} aside (or give ckpt_path=null); to "
            f"resume from another state, give ckpt_path=<one of {ckpt_path.parent}/*.ckpt>."
        ) from None

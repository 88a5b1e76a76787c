"""Many seeds of one CA or VAE trained together in one process, through the same Lightning Trainer
as a single run, then finished together.

Each member is the model a single run with that seed builds (same initial weights). The members'
parameters and buffers are stacked along a leading dimension (`MemberEnsemble`, on
src/models/members.py) and every step runs the model's own `training_loss` for all of them at
once with `torch.func.vmap` over `functional_call`. After training, the members' test stage and
evaluations run for all of them at once too (`member_jobs`), and each member's job only writes its
folder through the same `finish` as a single run.

Each member sees its single run's minibatches (its own `EpochShuffle` order,
`member_train_dataloader`), draws its VAE noise from its own generator, which starts in the state
its single run's global generator has after building the model, and keeps its own batch-norm
statistics. The optimisers used here (Adam, SGD, ...) update each element independently, so every
member follows its own trajectory; only floating-point summation order differs."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.data.memory import InMemoryDataModule
from src.evaluation.base import MemberSet
from src.files import remove_partials
from src.models.base import ReconstructionModel
from src.models.ca import ClassicalAutoencoder
from src.models.members import MemberModels
from src.models.vae import VariationalAutoencoder
from src.pipeline.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    WhereInterrupted,
    history_stride,
    keeps_epoch,
)
from src.pipeline.checkpoints import check_resumable, save_weights
from src.pipeline.config import MemberConfigs, build, check_config, check_trusted, config_yaml
from src.pipeline.finishing import finish, finishings_of_members
from src.pipeline.process import prepare_training_process
from src.pipeline.run import Run
from src.pipeline.training import seeded_model
from src.values import parse_bool

log = logging.getLogger(__name__)

BATCHABLE_MODELS = (ClassicalAutoencoder, VariationalAutoencoder)


def batching_problem(cfg: DictConfig) -> str | None:
    """Why jobs with this config cannot train in the batched path, or None if they can."""
    check_trusted(cfg.model)  # before its class is imported
    if get_class(cfg.model._target_) not in BATCHABLE_MODELS:
        return f"model {cfg.model._target_} is not a CA or VAE"
    if cfg.trainer.get("gradient_clip_val") or cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        return "gradient clipping or accumulation is set (they couple the members' gradients)"
    if cfg.trainer.get("strategy") not in (None, "auto") or cfg.trainer.get("devices") not in ("auto", 1):
        return "a multi-device strategy is set (the batched path trains on one device)"
    if cfg.model.get("kl_warmup_steps"):
        return "model.kl_warmup_steps is set (the warm-up follows one trainer's step)"
    if cfg.get("ckpt_path") is not None:
        return "ckpt_path is set (each job resumes its own checkpoint)"
    return None


def _is_matrix(stacked: torch.Tensor) -> bool:
    """A stacked weight matrix (members, out, in): a linear layer's."""
    return stacked.dim() == 3


def _training_loss(
    model: ReconstructionModel, images: torch.Tensor, noise: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return model.training_loss(images, noise)


class MemberEnsemble(pl.LightningModule):
    """Members of one architecture as one LightningModule: stacked parameters (what the optimiser
    updates), stacked buffers, one generator per member for its noise, and per-member epoch means
    of the training and validation terms (`member_rows`, each member's history, thinned as a single
    run's History thins it)."""

    def __init__(
        self,
        models: Sequence[ReconstructionModel],
        cpu_states: Sequence[torch.Tensor],
        seeds: Sequence[int],
        compile: bool = False,
        fuse_matmuls: bool = False,
        history_rows: int | None = None,
    ) -> None:
        super().__init__()
        members = MemberModels.stack(models)
        # The weights training starts from, kept apart (the optimiser updates the stacked ones in place).
        self.initial = MemberModels(
            members.template,
            {name: value.clone() for name, value in members.parameters.items()},
            {name: value.clone() for name, value in members.buffers.items()},
        )
        object.__setattr__(self, "members", members)  # its template is structure only, no submodule
        self.parameter_names, self.buffer_names = list(members.parameters), list(members.buffers)
        # Under vmap a linear layer's weight gradient comes out of the batched product as
        # (members, in, out); a contiguous (members, out, in) weight would copy it on every step, so
        # weight matrices are kept (and optimised) transposed, contiguous (`member_weights`).
        self.transposed = [_is_matrix(value) for value in members.parameters.values()]
        self.stacked = nn.ParameterList(
            [
                nn.Parameter(value.transpose(1, 2).contiguous() if flip else value)
                for value, flip in zip(members.parameters.values(), self.transposed, strict=True)
            ]
        )
        for index, value in enumerate(members.buffers.values()):
            self.register_buffer(f"stacked_buffer_{index}", value)
        self.optimizer_config = dict(models[0].hparams.optimizer)
        self.noise_shape = models[0].noise_shape
        self.count = len(models)
        self.history_rows = history_rows
        # A single run draws its noise next from its global generator of the training device: on the
        # CPU it is in the state left after building the model; a GPU's is seeded with the seed alone.
        self.cpu_states, self.seeds = [state.clone() for state in cpu_states], list(seeds)
        self.restored_states: list[torch.Tensor] | None = None
        self.generators: list[torch.Generator] = []
        # Per kept epoch: (epoch, step, {metric: every member's epoch mean}), kept on the device
        # (no host synchronisation per epoch) until `member_rows` reads them once at the end.
        self.epochs: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._last_val: dict[str, torch.Tensor] = {}
        # The members' step is many small element-wise passes over (members, batch, pixels):
        # torch.compile fuses them (`compile`), for the training and the validation steps; with
        # `fuse_matmuls` the members' batched products too (inductor decomposes each into a product
        # and a sum it fuses with its neighbours): memory-bound where a layer is a few units wide.
        # On a CPU this flag is what makes the pass decompose every product of dimensions <= 2048.
        self.compile = compile
        self.compile_options = (
            {"post_grad_fusion_options": {"decompose_mm_pass": {"bmm_skip_dynamic_shape_dim_check": True}}}
            if fuse_matmuls
            else {}
        )
        # One optimiser step per batch, written out: Lightning's closure machinery costs more than
        # the step of a thousand small members on a CPU (clipping and accumulation are not batched).
        self.automatic_optimization = False
        self._losses_of: dict[tuple[bool, bool], Callable[..., Any]] = {}

    # --- the members' computation ----------------------------------------------------------------
    def member_generators(self) -> list[torch.Generator]:
        """Each member's generator of its noise, in the state its single run's global one has."""
        if not self.generators:
            for index in range(self.count):
                generator = torch.Generator(self.device)
                if self.restored_states is not None:
                    generator.set_state(self.restored_states[index])
                elif self.device.type == "cpu":
                    generator.set_state(self.cpu_states[index])
                else:
                    generator.manual_seed(self.seeds[index])
                self.generators.append(generator)
        return self.generators

    def _noise(self, batch_size: int) -> torch.Tensor | None:
        shape = self.noise_shape(batch_size)
        if shape is None:
            return None
        return torch.stack(
            [torch.randn(shape, generator=g, device=self.device) for g in self.member_generators()]
        )

    def member_losses(
        self, images: torch.Tensor, shared: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every member's loss and terms (shape (members,)) on its own images (members, batch, ...),
        or on the same images for all (`shared`)."""
        # Batch norm follows the template's mode; Lightning sets this module's own flag directly.
        if self.members.template.training != self.training:
            self.members.template.train(self.training)
        noise = self._noise(images.shape[0 if shared else 1])
        key = (shared, noise is not None)
        if key not in self._losses_of:
            losses = self.members.vmapped(_training_loss, batched=[not shared, noise is not None])
            if self.compile:
                # One static graph per batch shape (an epoch's last batch is smaller): a dynamic one
                # would serve every step after the first short batch, and inductor fuses no products
                # whose sizes are symbolic.
                losses = torch.compile(losses, dynamic=False, options=self.compile_options or None)
            self._losses_of[key] = losses
        return self._losses_of[key](self.member_weights(), self.member_buffers(), images, noise)

    def member_weights(self) -> dict[str, torch.Tensor]:
        """The stacked parameters by the model's names, each in its model's own shape."""
        return {
            name: value.transpose(1, 2) if flip else value
            for name, value, flip in zip(self.parameter_names, self.stacked, self.transposed, strict=True)
        }

    def member_buffers(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"stacked_buffer_{i}") for i, name in enumerate(self.buffer_names)}

    def trained_members(self) -> MemberModels:
        """The members with their current weights (views of the trained ones)."""
        return MemberModels(
            self.members.template,
            {name: value.detach() for name, value in self.member_weights().items()},
            self.member_buffers(),
        )

    def _keeps(self, epoch: int) -> bool:
        trainer = self.trainer
        stride = history_stride(trainer.max_epochs, self.history_rows)
        return keeps_epoch(epoch, stride, trainer.max_epochs, trainer.check_val_every_n_epoch)

    def _accumulate(self, stage: str, loss: torch.Tensor, terms: dict[str, torch.Tensor], count: int) -> None:
        sums = self._sums.setdefault(stage, {})
        for name, value in {"loss": loss, **terms}.items():
            sums[name] = sums.get(name, 0) + value.detach() * count
        sums["_count"] = sums.get("_count", 0) + count

    def _epoch_means(self, stage: str) -> dict[str, torch.Tensor]:
        sums = self._sums.pop(stage, {})
        count = sums.pop("_count", 0)
        return {f"{stage}/{name}": total / count for name, total in sums.items()}

    # --- Lightning -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0]
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        loss, terms = self.member_losses(images, shared=False)
        if self._keeps(self.current_epoch):  # an epoch the history leaves out needs no means
            self._accumulate("train", loss, terms, images.shape[1])
        # Members are independent, so the gradient of the sum is each member's own gradient.
        self.manual_backward(loss.sum())
        optimizer.step()
        return {"loss": loss.detach().sum(), "member_losses": loss.detach()}

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        loss, terms = self.member_losses(batch[0], shared=True)
        self._accumulate("val", loss, terms, len(batch[0]))

    def on_validation_epoch_start(self) -> None:
        if self.trainer.sanity_checking:  # Lightning isolates the sanity check's random draws
            self._before_sanity_check = [g.get_state() for g in self.member_generators()]

    def on_validation_epoch_end(self) -> None:
        means = self._epoch_means("val")
        if self.trainer.sanity_checking:
            for generator, state in zip(self.member_generators(), self._before_sanity_check, strict=True):
                generator.set_state(state)
            return
        if not means:
            return
        self._last_val = means
        self.log("val/loss", means["val/loss"].mean(), prog_bar=True)

    def on_train_epoch_end(self) -> None:
        if self._keeps(self.current_epoch):
            self.epochs.append(
                (self.current_epoch, self.global_step, {**self._epoch_means("train"), **self._last_val})
            )

    def member_rows(self) -> Callable[[int], list[dict[str, float]]]:
        """Member m's history (one row per kept epoch: epoch, step, train/* and val/* means), read
        off the device once for all members; rows are built only when a member's folder is written."""
        keys = list(dict.fromkeys(key for _, _, means in self.epochs for key in means))
        columns = (
            {
                key: torch.stack(
                    [
                        means.get(key, torch.full((self.count,), float("nan"), device=self.device))
                        for *_, means in self.epochs
                    ]
                ).T.tolist()
                for key in keys
            }
            if self.epochs
            else {}
        )
        positions = [(epoch, step) for epoch, step, _ in self.epochs]

        def rows(member: int) -> list[dict[str, float]]:
            values = [columns[key][member] for key in keys]
            return (
                [
                    {"epoch": epoch, "step": step, **dict(zip(keys, row, strict=True))}
                    for (epoch, step), row in zip(positions, zip(*values, strict=True), strict=True)
                ]
                if keys
                else [{"epoch": epoch, "step": step} for epoch, step in positions]
            )

        return rows

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.optimizer_config, params=self.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["member_generators"] = [g.get_state() for g in self.member_generators()]
        checkpoint["member_epochs"] = self.epochs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generators, self.restored_states = [], checkpoint["member_generators"]
        self.epochs = checkpoint["member_epochs"]


class MemberData(pl.LightningDataModule):
    """A datamodule's data for members trained together: each member's own training batches
    (`member_train_dataloader`), the validation batches shared by all."""

    def __init__(self, datamodule: InMemoryDataModule, shuffle_seeds: Sequence[int]) -> None:
        super().__init__()
        self.datamodule, self.shuffle_seeds = datamodule, list(shuffle_seeds)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        self.datamodule.trainer = self.trainer  # it places the data on the training device
        return self.datamodule.member_train_dataloader(self.shuffle_seeds)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        self.datamodule.trainer = self.trainer
        return self.datamodule.val_dataloader()


@dataclass
class TrainedMembers:
    """The outcome of `train_members`: the members' final and initial weights (on the device they
    trained on), each member's history (`rows(member)`) and generator, the datamodule, the steps
    and epochs run, the validation batches, the training time and the precision that ran."""

    final: MemberModels
    initial: MemberModels
    models: list[ReconstructionModel]
    rows: Callable[[int], list[dict[str, float]]]
    generators: list[torch.Generator]
    datamodule: InMemoryDataModule
    epochs: int
    steps: int
    val_batches: int
    seconds: float
    precision: str

    def model(self, index: int) -> ReconstructionModel:
        """Member `index` as a model of its own, with its trained weights, on the training device."""
        model = self.models[index]
        model.load_state_dict(self.final.state_dict(index))
        return model.to(self.final.device).eval()

    def member_set(self) -> MemberSet:
        return MemberSet(self.final, self.initial.to(self.final.device), self.model)


@contextlib.contextmanager
def lightning_quiet() -> Iterator[None]:
    """Lightning's start-up lines (GPU/TPU available, tips) left out: a sweep prints its own progress;
    and its warning that the chunk's folder is not empty (it holds members.yaml by design)."""
    loggers = [
        logging.getLogger(name)
        for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def train_members(
    cfgs: list[DictConfig], chunk_dir: Path, callbacks: Sequence[pl.Callback] = ()
) -> TrainedMembers:
    """Train one member per config (configs differ only in `seed`) through a Lightning Trainer built
    from the configs' `trainer`; the ensemble's last.ckpt lives in `chunk_dir`, and an interrupted
    chunk started again with the same members and config (its members.yaml) resumes from it.
    `callbacks` join the ensemble's own (a training step's output holds every member's loss,
    `member_losses`)."""
    prepare_training_process()
    check_config(cfgs[0])  # as a single run checks, before anything trains
    Run(cfgs[0], chunk_dir).check_evaluations()
    models, cpu_states = [], []
    for cfg in cfgs:
        models.append(seeded_model(cfg))  # as a single run builds it
        cpu_states.append(torch.get_rng_state())
    datamodule: InMemoryDataModule = build(cfgs[0].data)
    datamodule.setup()
    ensemble = MemberEnsemble(
        models,
        cpu_states,
        [cfg.seed for cfg in cfgs],
        compile=parse_bool("compile_members", cfgs[0].compile_members),
        fuse_matmuls=parse_bool("fuse_member_matmuls", cfgs[0].fuse_member_matmuls),
        history_rows=OmegaConf.select(cfgs[0], "callbacks.history.max_rows", default=None),
    )
    last = chunk_dir / "last.ckpt"
    # What the chunk trains: its last.ckpt resumes only the same members with the same config.
    members = config_yaml({"members": [cfg.seed for cfg in cfgs], **OmegaConf.to_container(cfgs[0])})
    identity = chunk_dir / "members.yaml"
    if last.is_file() and (not identity.is_file() or identity.read_text() != members):
        log.info("%s is of other members or another config: they train afresh", last)
        last.unlink()
    chunk_dir.mkdir(parents=True, exist_ok=True)
    identity.write_text(members)
    # As often as a single run writes its own last.ckpt (conf/callbacks/default.yaml).
    every = OmegaConf.select(cfgs[0], "callbacks.last_checkpoint.every_n_epochs", default=1)
    with lightning_quiet():
        trainer: pl.Trainer = build(
            cfgs[0].trainer,
            logger=False,
            callbacks=[LastCheckpoint(chunk_dir, every_n_epochs=every), WhereInterrupted(), *callbacks],
            default_root_dir=str(chunk_dir),
            enable_model_summary=False,
            plugins=[AtomicCheckpointIO()],
        )
        seeds = [int(cfg.data.shuffle_seed) for cfg in cfgs]
        started = time.perf_counter()
        remove_partials(chunk_dir)  # what a kill during a checkpoint's writing left
        resume = str(last) if last.is_file() else None
        if resume is not None:
            check_resumable(last)
        trainer.fit(ensemble, datamodule=MemberData(datamodule, seeds), ckpt_path=resume)
        elapsed = time.perf_counter() - started
    return TrainedMembers(
        final=ensemble.trained_members(),
        initial=ensemble.initial,
        models=models,
        rows=ensemble.member_rows(),
        generators=ensemble.member_generators(),
        datamodule=datamodule,
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        val_batches=int(trainer.num_val_batches[0]) if trainer.num_val_batches else 0,
        seconds=elapsed,
        precision=trainer.precision,
    )


def member_jobs(
    members: TrainedMembers,
    cfgs: MemberConfigs,
    indices: Sequence[int],
    run_dirs: Sequence[Path],
    records: Sequence[dict[str, str]] | None = None,
) -> list[Callable[[Run], dict[str, Any]]]:
    """The jobs (as `run_job` runs them) that write the run folders `run_dirs` of the members
    `indices` as their single runs would, with Hydra's record of each job (`records`, .hydra/ file
    name to text, from the launcher; none given: none written). The per-image work of these
    members (validation scores, test stage, evaluations) is done first, for all of them at once
    (`finishings_of_members`); the jobs only write. Should that shared work fail, every member's
    job fails with its error."""
    for run_dir in run_dirs:
        run_dir.mkdir(parents=True, exist_ok=True)  # evaluations may write files (solution.md)
    try:
        shared: tuple | BaseException = finishings_of_members(
            members.member_set().select(indices),
            [members.generators[index] for index in indices],
            members.datamodule,
            [cfgs[index] for index in indices],
            run_dirs,
            members.val_batches,
        )
    except Exception as error:  # each job reports it, in its own error.txt
        shared = error
    return [
        _member_job(members, cfgs, index, position, shared, records[position] if records else {})
        for position, index in enumerate(indices)
    ]


def _member_job(
    members: TrainedMembers,
    cfgs: MemberConfigs,
    index: int,
    position: int,
    shared: tuple | BaseException,
    record: dict[str, str],
) -> Callable[[Run], dict[str, Any]]:
    """Member `index`'s job; `position`: its place among the members finished together; `record`:
    its .hydra/ files."""

    def write(run: Run) -> dict[str, Any]:
        if isinstance(shared, BaseException):
            raise shared
        val_scores, finishings = shared
        cfg, run_dir, rows = cfgs[index], run.dir, members.rows(index)
        run.start(resolved=lambda: cfgs.resolved(index), record=record)
        last_epoch = rows[-1] if rows else {}
        metrics: dict[str, Any] = {
            "train/time_s": members.seconds / members.final.count,
            **{key: value for key, value in last_epoch.items() if key.startswith(("train/", "val/"))},
        }
        if "val/loss" in metrics:
            metrics.update(val_scores[position])
        diverged = [key for key, value in metrics.items() if not math.isfinite(value)]
        if diverged:
            raise FloatingPointError(f"Training of this seed diverged: {', '.join(diverged)} not finite.")
        state = members.final.state_dict(index)
        metrics.update(
            seed=cfg.seed,
            precision=members.precision,
            epochs=members.epochs,
            steps=members.steps,
            parameters=sum(
                value.numel() for name, value in state.items() if name in members.final.parameters
            ),
        )
        save_weights(
            state,
            dict(members.final.hparams),
            run_dir / "checkpoints" / "last.ckpt",
            members.steps,
            members.epochs,
        )
        metrics["checkpoint"] = "checkpoints/last.ckpt"  # the weights every metric was measured on
        if run.loggers:
            every = cfg.trainer.get("check_val_every_n_epoch") or 1
            for row in rows:  # the member's epoch curves; val/* only where it validated (rows carry it on)
                validated = (int(row["epoch"]) + 1) % every == 0
                logged = {
                    key: value
                    for key, value in row.items()
                    if key != "step" and math.isfinite(value) and (validated or not key.startswith("val/"))
                }
                for logger in run.loggers:
                    logger.log_metrics(logged, step=int(row["step"]))
        model = members.model(index) if cfg.figures else members.models[index]
        return finish(run, model, members.datamodule, metrics, rows, finishings[position])

    return write

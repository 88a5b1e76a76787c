"""The one path that finishes a trained model: the test stage, the evaluations the config declares
(conf/evaluations/), history.csv, metrics.json, the figures and the loggers' results. A single run,
each member of a batched chunk and `src.eval` all end in `finish`.

The per-image work is computed apart from the writing: `finishing_of` does it for one model,
`finishings_of_members` for every member of a chunk at once (the model's own methods vmapped over
the members' stacked weights, src/models/members.py), so that a sweep's members are tested and
evaluated in a few passes on the device and only their files are written one by one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.models.base import ReconstructionModel
from src.pipeline.callbacks import write_history
from src.pipeline.config import build
from src.pipeline.run import Run, loaded_model
from src.reporting import tensorboard as tensorboard_reporting
from src.reporting import wandb as wandb_reporting
from src.reporting.figures import run_figures
from src.values import parse_bool

BatchMetrics = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class Finishing:
    """What finishing a model computes before anything is written: the test stage's metrics
    (`test/*`) and the declared evaluations' results."""

    test: dict[str, Any] = field(default_factory=dict)
    evaluated: EvaluationResult = field(default_factory=EvaluationResult)


def batch_limit(limit: int | float | None, count: int) -> int:
    """How many of `count` batches a stage runs under Lightning's `limit_<stage>_batches`: an int is
    a number of batches, a float a share of them (1.0 all, and at least one when above 0), null
    all of them."""
    if limit is None:
        return count
    if isinstance(limit, float):
        return min(count, max(1, int(count * limit))) if limit > 0 else 0
    return min(count, int(limit))


def stage_means(
    batch_metrics: BatchMetrics, images: torch.Tensor, batch_size: int, batches: int
) -> dict[str, torch.Tensor]:
    """Means over the first `batches` batches of `images` of each batch's metrics, weighted by the
    batch's size, as Lightning's epoch means of a stage are (a metric may have a leading member
    dimension)."""
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for batch in images.split(batch_size)[:batches]:
        for name, value in batch_metrics(batch).items():
            totals[name] = totals.get(name, 0) + value.double() * len(batch)
        count += len(batch)
    return {name: total / count for name, total in totals.items()}


def stage_batches(
    cfg: DictConfig, datamodule: InMemoryDataModule, stage: str
) -> tuple[torch.Tensor, int, int]:
    """A stage's images, batch size and number of batches (its `trainer.limit_<stage>_batches`)."""
    images = datamodule.images(stage)
    batch_size = min(datamodule.batch_size, len(images))
    count = math.ceil(len(images) / batch_size)
    return images, batch_size, batch_limit(cfg.trainer.get(f"limit_{stage}_batches"), count)


def evaluation_context(cfg: DictConfig, run_dir: Path) -> EvaluationContext:
    return EvaluationContext(run_dir, parse_bool("figures", cfg.figures), cfg, loaded_model)


def declared_evaluations(cfg: DictConfig) -> list[Any]:
    """The evaluations the config declares (conf/evaluations/), built, in order; none without `test`."""
    return [build(spec) for spec in (cfg.get("evaluations") or {}).values()] if cfg.test else []


@torch.no_grad()
def finishing_of(
    model: ReconstructionModel, datamodule: InMemoryDataModule, cfg: DictConfig, run_dir: Path
) -> Finishing:
    """The test stage and every declared evaluation of one model (when `test`)."""
    if not cfg.test:
        return Finishing()
    model.eval()
    images, batch_size, batches = stage_batches(cfg, datamodule, "test")
    means = stage_means(
        lambda batch: model.evaluation_metrics(batch.to(model.device)), images, batch_size, batches
    )
    finishing = Finishing(test={f"test/{name}": float(value) for name, value in means.items()})
    context = evaluation_context(cfg, run_dir)
    for evaluation in declared_evaluations(cfg):
        finishing.evaluated.merge(evaluation(model, datamodule, context))
    return finishing


def _member_noise(
    model: ReconstructionModel, generators: Sequence[torch.Generator], batch_size: int, device: torch.device
) -> torch.Tensor | None:
    """Each member's noise for a batch, from its own generator (what its single run draws from its
    global generator)."""
    shape = model.noise_shape(batch_size)
    if shape is None:
        return None
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


def _set_global_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_rng_state(state)
    else:
        torch.cuda.set_rng_state(state, device)


@torch.no_grad()
def finishings_of_members(
    members: MemberSet,
    generators: Sequence[torch.Generator],
    datamodule: InMemoryDataModule,
    cfgs: Sequence[DictConfig],
    run_dirs: Sequence[Path],
    val_batches: int,
) -> tuple[list[dict[str, float]], list[Finishing]]:
    """For every member at once: the means of its per-image scores over the validation batches its
    training validated on (`val/<score>`, which a single run's validation logs), and its
    finishing. The test stage draws each member's noise from its own generator, in the state its
    training left it, as its single run draws from the global one; evaluations that have no
    batched form (`evaluate_members`) run member by member from that same state."""
    final, device = members.final, members.final.device
    template = final.template

    val: list[dict[str, float]] = [{} for _ in cfgs]
    if val_batches:
        images, batch_size, _ = stage_batches(cfgs[0], datamodule, "val")
        means = stage_means(
            lambda batch: {
                name: value.mean(-1)
                for name, value in final.call(ReconstructionModel.scores, batch.to(device)).items()
            },
            images,
            batch_size,
            val_batches,
        )
        for name, values in means.items():
            for index, value in enumerate(values.tolist()):
                val[index][f"val/{name}"] = value

    finishings = [Finishing() for _ in cfgs]
    if not cfgs[0].test:
        return val, finishings
    images, batch_size, batches = stage_batches(cfgs[0], datamodule, "test")
    has_noise = template.noise_shape(1) is not None

    def test_batch(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = _member_noise(template, generators, len(batch), device)
        return final.call(
            ReconstructionModel.evaluation_metrics, batch.to(device), noise, batched=[False, has_noise]
        )

    for name, values in stage_means(test_batch, images, batch_size, batches).items():
        for index, value in enumerate(values.tolist()):
            finishings[index].test[f"test/{name}"] = value

    contexts = [evaluation_context(cfg, run_dir) for cfg, run_dir in zip(cfgs, run_dirs, strict=True)]
    for evaluation in declared_evaluations(cfgs[0]):
        if hasattr(evaluation, "evaluate_members"):
            results = evaluation.evaluate_members(members, datamodule, contexts)
        else:
            results = []
            for index, context in enumerate(contexts):
                _set_global_state(generators[index].get_state(), device)
                results.append(evaluation(members.model(index), datamodule, context))
                generators[index].set_state(_global_state(device))
        for finishing, result in zip(finishings, results, strict=True):
            finishing.evaluated.merge(result)
    return val, finishings


def _global_state(device: torch.device) -> torch.Tensor:
    return torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device)


def finish(
    run: Run,
    model: ReconstructionModel,
    datamodule: InMemoryDataModule,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    finishing: Finishing | None = None,
) -> dict[str, Any]:
    """The end of every run: the test stage and the evaluations (computed here for this model unless
    `finishing` brings them), history.csv, metrics.json, the figures, and the results and figures
    to the run's loggers (TensorBoard, W&B, whose run is then finished)."""
    if finishing is None:
        finishing = finishing_of(model, datamodule, run.cfg, run.dir)
    metrics.update(finishing.test)
    for logger in run.loggers:  # the test stage's means, as Lightning's test stage logs them
        if finishing.test:
            logger.log_metrics(finishing.test, step=int(metrics.get("steps") or 0))
            logger.save()
    metrics.update(finishing.evaluated.metrics)
    write_history(run.dir / "history.csv", history)
    run.write_metrics(metrics)
    figures = list(finishing.evaluated.figures)
    if run.cfg.figures:
        figures = run_figures(model, datamodule.images("test"), history, run.dir) + figures
    # The loggers have the validation curves (logged as training went) and the test stage's means.
    already = {key for key in metrics if key.startswith("val/")} | set(finishing.test)
    tensorboard_reporting.log_results(run.loggers, metrics, figures, already)
    wandb_reporting.finish_runs(run.loggers, metrics, figures, run.dir)
    return metrics

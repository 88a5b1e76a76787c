"""The OOD settings as one typed, checked object (`OODSettings`, from the `ood` config group) and
the one object that computes a model's per-image anomaly scores under them (`Scorer`): the model's
own scores, the likelihood ratio against a background model, the training-neighbour baselines and
DoSE. The run's OOD evaluation (src/evaluation/ood.py) and `src.score` (new images) both score
through it, so a new image gets exactly the scores the run gave its own."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from src.data.ood_sets import KNOWN_SETS, evenly_spaced
from src.errors import ConfigValueError
from src.evaluation.detection import choose_threshold
from src.evaluation.neighbours import NEIGHBOUR_SCORES, TrainingNeighbours, shared_neighbours
from src.evaluation.scoring import LIKELIHOOD_SCORES, score_images
from src.evaluation.typicality import NOT_STATISTICS, default_statistics, dose_scores
from src.models.base import ReconstructionModel
from src.values import parse_bool


def _whole(key: str, value: Any, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigValueError(f"ood.{key} must be a whole number >= {minimum} ({hint}), got {value!r}")
    return value


@dataclass(frozen=True)
class ThresholdSettings:
    """`ood.threshold`: how the decision threshold is chosen (detection.choose_threshold)."""

    method: str = "percentile"
    percentile: float = 99.0
    value: float | None = None


@dataclass(frozen=True)
class NeighbourSettings:
    """`ood.neighbours`: the model-free baselines' k (0: none) and the training images searched."""

    k: int = 0
    reference_images: int | None = 20000


@dataclass(frozen=True)
class OODSettings:
    """The `ood` group (conf/ood/common.yaml documents each key), typed and checked by `of`."""

    enabled: bool = True
    sets: tuple[str, ...] = ()
    score: str = "recon_bce"
    threshold: ThresholdSettings = field(default_factory=ThresholdSettings)
    background: str | None = None
    dose_statistics: tuple[str, ...] | None = None
    regret_steps: int = 0
    neighbours: NeighbourSettings = field(default_factory=NeighbourSettings)
    samples: int = 0
    noise_amplitude: float = 0.5
    max_images: int | None = None
    batch_size: int = 500
    plots: bool = True
    plot_points: int = 2000
    seed: int = 0

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> OODSettings:
        """The settings of an `ood` config (any mapping), each value checked on its own: the key and
        the fix on the first that is wrong (ConfigValueError)."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigValueError(f"ood: unknown key(s) {unknown}; the keys are {sorted(known)}")
        values = dict(config)
        sets = tuple(values.get("sets") or ())
        unknown_sets = [name for name in sets if name not in KNOWN_SETS]
        if unknown_sets:
            raise ConfigValueError(f"ood.sets: unknown set(s) {unknown_sets}; choose from {list(KNOWN_SETS)}")
        neighbours = dict(values.get("neighbours") or {})
        k = _whole("neighbours.k", neighbours.get("k", 0), 0, "0 skips them")
        references = neighbours.get("reference_images", NeighbourSettings.reference_images)
        if references is not None and (
            isinstance(references, bool) or not isinstance(references, int) or references <= k
        ):
            raise ConfigValueError(
                f"ood.neighbours.reference_images must be a whole number above k={k} (or null: every "
                f"training image), got {references!r}"
            )
        threshold = ThresholdSettings(**dict(values.get("threshold") or {}))
        choose_threshold(threshold.method, torch.zeros(1), threshold.percentile, threshold.value)
        max_images = values.get("max_images")
        if max_images is not None:
            _whole("max_images", max_images, 1, "null: every image")
        statistics = values.get("dose_statistics")
        background = values.get("background")
        return cls(
            enabled=parse_bool("ood.enabled", values.get("enabled", True)),
            sets=sets,
            score=str(values.get("score", cls.score)),
            threshold=threshold,
            background=None if background is None else str(background),
            dose_statistics=None if statistics is None else tuple(statistics),
            regret_steps=_whole("regret_steps", values.get("regret_steps", 0), 0, "0 skips it"),
            neighbours=NeighbourSettings(k, references),
            samples=_whole("samples", values.get("samples", 0), 0, "0 skips neg_elbo_iw"),
            noise_amplitude=float(values.get("noise_amplitude", cls.noise_amplitude)),
            max_images=max_images,
            batch_size=_whole("batch_size", values.get("batch_size", cls.batch_size), 1, "images per batch"),
            plots=parse_bool("ood.plots", values.get("plots", True)),
            plot_points=_whole(
                "plot_points", values.get("plot_points", cls.plot_points), 1, "points per set"
            ),
            seed=_whole("seed", values.get("seed", 0), 0, "the synthetic sets' seed"),
        )

    def score_names(self, anomaly_scores: tuple[str, ...]) -> list[str]:
        """Every score these settings compute for a model with these anomaly scores: the model's
        own (those that cost extra, neg_elbo_iw and likelihood_regret, are named too; `check` says
        what they need), their input-complexity twins, `likelihood_ratio` with a background model,
        `png_bits`, the neighbour baselines with neighbours.k > 0, and `dose`."""
        twins = [f"{name}_ic" for name in LIKELIHOOD_SCORES if name in anomaly_scores]
        ratio = ["likelihood_ratio"] if self.background is not None and "neg_elbo" in anomaly_scores else []
        nearest = list(NEIGHBOUR_SCORES) if self.neighbours.k > 0 else []
        return [*anomaly_scores, *twins, *ratio, "png_bits", *nearest, "dose"]

    def check(self, anomaly_scores: tuple[str, ...], data_name: str) -> None:
        """What depends on the model and the data: the decision score and DoSE's statistics among
        the model's scores, with the settings the costly ones need; no OOD set the training set."""
        if data_name in self.sets:
            raise ConfigValueError(f"ood.sets holds {data_name!r}, the training dataset itself; remove it")
        names = self.score_names(anomaly_scores)
        needs = {
            "neg_elbo_iw": (self.samples, "latent samples: set ood.samples=16 (or more)"),
            "neg_elbo_iw_ic": (self.samples, "latent samples: set ood.samples=16 (or more)"),
            "likelihood_regret": (self.regret_steps, "optimiser steps: set ood.regret_steps=20 (or more)"),
        }
        if self.score == "likelihood_ratio" and self.background is None:
            raise ConfigValueError(
                "ood.score=likelihood_ratio needs a background model: set ood.background=<its checkpoint> "
                "(experiment=ood_mnist_vae_background trains one)"
            )
        if self.score not in names:
            raise ConfigValueError(
                f"ood.score={self.score!r} is not a score of this model; choose from {names}"
            )
        if self.score in needs and not needs[self.score][0]:
            raise ConfigValueError(f"ood.score={self.score} needs {needs[self.score][1]}")
        allowed = [name for name in names if name not in NOT_STATISTICS and not name.endswith("_ic")]
        statistics = self.dose_statistics
        if statistics is not None and (not statistics or set(statistics) - set(allowed)):
            raise ConfigValueError(
                f"ood.dose_statistics={list(statistics)!r}: give null (every score) or a non-empty list "
                f"from {allowed}"
            )
        for name in statistics or ():
            if name in needs and not needs[name][0]:
                raise ConfigValueError(f"ood.dose_statistics holds {name}, which needs {needs[name][1]}")


def check_background(model: ReconstructionModel, background: ReconstructionModel) -> None:
    """The likelihood ratio compares two likelihoods of the same kind on the same images."""
    if "neg_elbo" not in background.anomaly_scores or "neg_elbo" not in model.anomaly_scores:
        raise ConfigValueError(
            "ood.background: the likelihood ratio needs the negative ELBO of both models (VAEs with a "
            "sigmoid output); give a VAE background checkpoint, or set ood.background=null"
        )
    if background.image_shape != model.image_shape:
        raise ConfigValueError(
            f"ood.background takes {background.image_shape} images, the model {model.image_shape}: give a "
            "background model trained on the same data"
        )
    if background.hparams.reconstruction != model.hparams.reconstruction:
        raise ConfigValueError(
            f"ood.background was trained with model.reconstruction={background.hparams.reconstruction}, the "
            f"model with {model.hparams.reconstruction}: their likelihoods do not compare; train the "
            "background with the model's settings"
        )


def likelihood_ratio(
    scores: Mapping[str, torch.Tensor], background: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Ren et al. (2019)'s likelihood ratio as an anomaly score (higher = more anomalous): the
    model's negative ELBO minus the background model's, i.e. -log p(x) + log p_background(x). The
    background model, trained on perturbed inputs, explains the population-level statistics
    (background pixels, complexity) that both share; the ratio keeps what is specific to the data."""
    return scores["neg_elbo"] - background["neg_elbo"]


class Scorer:
    """A model's per-image anomaly scores under `settings` (float64 tensors (N,), higher = more
    anomalous): `__call__` gives the model's own (score_images: with their input-complexity twins
    and png_bits), `likelihood_ratio` with a `background` model, and `pixel_knn`/`pixel_lof` when
    neighbours.k > 0 (searching `training_images`, evenly spaced down to
    neighbours.reference_images); `dose` then comes from validation scores (`dose`). `timings`
    gathers the seconds each part took (for the costs per score)."""

    def __init__(
        self,
        model: ReconstructionModel,
        settings: OODSettings,
        background: ReconstructionModel | None = None,
        training_images: torch.Tensor | None = None,
    ) -> None:
        if background is not None:
            check_background(model, background)
        self.model, self.settings, self.background = model, settings, background
        self.timings: dict[str, float] = {}
        self.neighbours: TrainingNeighbours | None = None
        if settings.neighbours.k > 0:
            if training_images is None:
                raise ValueError("neighbours.k > 0: the scorer needs the training images")
            started = time.perf_counter()
            reference = evenly_spaced(training_images, settings.neighbours.reference_images)
            self.neighbours = shared_neighbours(reference.to(model.device), settings.neighbours.k)
            self._spent("neighbours", started)

    def _spent(self, part: str, started: float) -> None:
        self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - started

    def __call__(
        self, images: torch.Tensor, pass_scores: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Every score of each of `images`; `pass_scores`: the model's deterministic pass over them,
        when already computed (score_images)."""
        settings = self.settings
        scores = score_images(
            self.model,
            images,
            settings.batch_size,
            settings.samples,
            settings.regret_steps,
            self.timings,
            pass_scores,
        )
        if self.background is not None:  # scored like the model, on the same images
            started = time.perf_counter()
            scores["likelihood_ratio"] = likelihood_ratio(
                scores, score_images(self.background, images, settings.batch_size)
            )
            self._spent("background", started)
        if self.neighbours is not None:  # model-free: the training images' own neighbourhoods
            started = time.perf_counter()
            scores.update(self.neighbours(images))
            self._spent("neighbours", started)
        return scores

    def statistics(self, validation: Mapping[str, torch.Tensor]) -> list[str]:
        """The scores DoSE models: ood.dose_statistics, or every model score of the validation set."""
        return list(self.settings.dose_statistics or default_statistics(validation))

    def dose(
        self, validation: Mapping[str, torch.Tensor], sets: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DoSE's `dose` score of the validation images (cross-fitted) and of each other set, from
        densities of the validation scores (typicality.dose_scores)."""
        started = time.perf_counter()
        statistics = self.statistics(validation)
        missing = sorted({name for name in statistics for scores in sets.values() if name not in scores})
        if missing or any(name not in validation for name in statistics):
            raise ConfigValueError(f"the dose score models {statistics}, but {missing} were not computed")
        scored = dose_scores(validation, sets, statistics)
        self._spent("dose", started)
        return scored

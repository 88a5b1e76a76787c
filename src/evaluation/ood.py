"""Anomaly and out-of-distribution (OOD) detection after testing: per-image scores of validation,
test and OOD images, a threshold from held-out in-distribution validation scores (never OOD data),
the detection metrics, scores.csv, ood.md (report 004's Table 2) and figures."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src.data.memory import InMemoryDataModule
from src.data.ood_sets import (
    KNOWN_SETS,
    TORCHVISION_SETS,
    evenly_spaced,
    evenly_spaced_indices,
    ood_set_classes,
    ood_set_indices,
    ood_sets,
)
from src.data.torchvision_sets import data_root, load_torchvision_images
from src.errors import ConfigValueError
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.evaluation.detection import (
    auroc,
    best_f1_threshold,
    choose_threshold,
    detection_metrics,
    labelled,
)
from src.evaluation.neighbours import NEIGHBOUR_SCORES, TrainingNeighbours
from src.evaluation.scoring import LIKELIHOOD_SCORES, latent_codes, png_lengths, score_images
from src.evaluation.typicality import NOT_STATISTICS, default_statistics, dose_scores
from src.models.base import ReconstructionModel
from src.reporting import figures as figures_module
from src.reporting.tables import ood_report, write_scores_csv


class OODDetection:
    """The `ood` evaluation, configured by the run config's key `settings` (default `ood`: the
    group conf/ood/<data>.yaml), read when it runs, so that src.eval's overrides of it apply."""

    def __init__(self, settings: str = "ood") -> None:
        self.settings = settings

    def check(self, config: DictConfig, model_class: type[ReconstructionModel]) -> None:
        """Before training: every `ood.*` value that can be checked without a trained model."""
        settings = self._settings(config)
        if not settings.get("enabled", True):
            return
        check_settings(settings, model_class.anomaly_scores, str(config.data.get("name")))
        for name in (name for name in settings["sets"] if name in TORCHVISION_SETS):
            if config.data.get("dataset") not in TORCHVISION_SETS.values():
                raise ConfigValueError(
                    f"OOD set {name!r} needs 28x28 images; remove it from ood.sets for {config.data.name}"
                )
            # Present, or downloaded now: a missing OOD set stops the run before training, not after.
            root = data_root(config.data.get("root"))
            load_torchvision_images(TORCHVISION_SETS[name], root, train=False, download=config.data.download)
        background = settings.get("background")
        if background is not None and not Path(str(background)).is_file():
            raise ConfigValueError(
                f"ood.background={background} does not exist: train the background model first "
                "(experiment=ood_mnist_vae_background) and give its checkpoints/last.ckpt, or set it null"
            )

    def _settings(self, config: DictConfig) -> DictConfig:
        settings = OmegaConf.select(config, self.settings)
        if settings is None:
            raise ConfigValueError(f"evaluations.ood.settings={self.settings!r} names no key of the config")
        return settings

    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        settings = self._settings(context.config)
        if not settings.get("enabled", True):
            return EvaluationResult()
        background = None
        if settings.get("background") is not None:
            if context.load_model is None:
                raise ConfigValueError(
                    "ood.background is set, but this run gives its evaluations no model loader"
                )
            background = context.load_model(Path(str(settings.background))).to(model.device).eval()
        return evaluate(settings, model, datamodule, context.run_dir, context.figures, background)


def score_names(
    anomaly_scores: tuple[str, ...], background: bool = False, neighbours: bool = False
) -> list[str]:
    """Every score the OOD evaluation can compute for a model with these anomaly scores (those that
    cost extra, such as neg_elbo_iw and likelihood_regret, when their settings ask for them), with
    `likelihood_ratio` when a background model is given and the training-neighbour baselines when
    ood.neighbours.k > 0."""
    twins = [f"{name}_ic" for name in LIKELIHOOD_SCORES if name in anomaly_scores]
    ratio = ["likelihood_ratio"] if background and "neg_elbo" in anomaly_scores else []
    nearest = list(NEIGHBOUR_SCORES) if neighbours else []
    return [*anomaly_scores, *twins, *ratio, "png_bits", *nearest, "dose"]


# metrics.json keys of each score's cost: seconds per 1000 images (wall-clock time: "time" marks
# keys that no two runs share).
COST = "ood/time_per_1000_images/"


def score_costs(
    names: list[str], timings: Mapping[str, float], statistics: list[str] | None
) -> dict[str, float]:
    """The seconds each score took over all scored images: what it needs of the deterministic pass
    (`pass`), the importance-weighted bound, the regret, the background model, the PNG lengths and
    DoSE's densities (timed by `evaluate`)."""
    extra = {
        "neg_elbo_iw": "neg_elbo_iw",
        "likelihood_regret": "likelihood_regret",
        "likelihood_ratio": "background",
    }
    costs = {}
    for name in names:
        if name == "png_bits":
            costs[name] = timings["png_bits"]
        elif name in NEIGHBOUR_SCORES:
            costs[name] = timings["neighbours"]
        elif name == "dose":
            used = statistics if statistics is not None else default_statistics(dict.fromkeys(names))
            costs[name] = (
                timings["pass"] + timings["dose"] + sum(timings.get(extra.get(s, ""), 0.0) for s in used)
            )
        else:
            base = name.removesuffix("_ic")
            costs[name] = timings["pass"] + timings.get(extra.get(base, ""), 0.0)
            costs[name] += timings["png_bits"] if name.endswith("_ic") else 0.0
    return costs


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


def check_settings(cfg: Mapping[str, Any], anomaly_scores: tuple[str, ...], data_name: str) -> None:
    """The OOD settings' values, each refused with its key and the fix (ConfigValueError)."""
    unknown = [name for name in cfg["sets"] if name not in KNOWN_SETS]
    if unknown:
        raise ConfigValueError(f"ood.sets: unknown set(s) {unknown}; choose from {list(KNOWN_SETS)}")
    if data_name in cfg["sets"]:
        raise ConfigValueError(f"ood.sets holds {data_name!r}, the training dataset itself; remove it")
    samples = cfg.get("samples", 0)
    if not isinstance(samples, int) or samples < 0:
        raise ConfigValueError(
            f"ood.samples must be a whole number >= 0 (0 skips neg_elbo_iw), got {samples!r}"
        )
    regret_steps = cfg.get("regret_steps", 0)
    if not isinstance(regret_steps, int) or regret_steps < 0:
        raise ConfigValueError(
            f"ood.regret_steps must be a whole number >= 0 (0 skips it), got {regret_steps!r}"
        )
    neighbours = cfg.get("neighbours") or {}
    k, references = neighbours.get("k", 0), neighbours.get("reference_images")
    if not isinstance(k, int) or k < 0:
        raise ConfigValueError(f"ood.neighbours.k must be a whole number >= 0 (0 skips them), got {k!r}")
    if references is not None and (not isinstance(references, int) or references <= k):
        raise ConfigValueError(
            f"ood.neighbours.reference_images must be a whole number above k={k} (or null: every "
            f"training image), got {references!r}"
        )
    score = cfg["score"]
    names = score_names(anomaly_scores, cfg.get("background") is not None, k > 0)
    # What each costly score needs to be computed at all, and the setting that gives it.
    needs = {
        "neg_elbo_iw": (samples, "latent samples: set ood.samples=16 (or more)"),
        "neg_elbo_iw_ic": (samples, "latent samples: set ood.samples=16 (or more)"),
        "likelihood_regret": (regret_steps, "optimiser steps: set ood.regret_steps=20 (or more)"),
    }
    if score == "likelihood_ratio" and cfg.get("background") is None:
        raise ConfigValueError(
            "ood.score=likelihood_ratio needs a background model: set ood.background=<its checkpoint> "
            "(experiment=ood_mnist_vae_background trains one)"
        )
    if score not in names:
        raise ConfigValueError(f"ood.score={score!r} is not a score of this model; choose from {names}")
    if score in needs and not needs[score][0]:
        raise ConfigValueError(f"ood.score={score} needs {needs[score][1]}")
    statistics = cfg.get("dose_statistics")
    allowed = [name for name in names if name not in NOT_STATISTICS and not name.endswith("_ic")]
    if statistics is not None and (not statistics or set(statistics) - set(allowed)):
        raise ConfigValueError(
            f"ood.dose_statistics={list(statistics)!r}: give null (every score) or a non-empty list "
            f"from {allowed}"
        )
    for name in statistics or []:
        if name in needs and not needs[name][0]:
            raise ConfigValueError(f"ood.dose_statistics holds {name}, which needs {needs[name][1]}")
    threshold = cfg["threshold"]
    choose_threshold(
        threshold["method"], torch.zeros(1), threshold.get("percentile", 99.0), threshold.get("value")
    )


def by_class(
    in_scores: torch.Tensor,
    out_scores: torch.Tensor,
    threshold: float,
    labels: torch.Tensor,
    class_names: list[str],
) -> dict[str, dict[str, float]]:
    """Per class of the OOD images (by name, "/" written as "-"): `recall`, the share called OOD at
    `threshold`, and `auroc`, the AUROC of that class's images against all in-distribution images
    (the set's AUROC is their mean weighted by class size)."""
    return {
        class_names[label].replace("/", "-"): {
            "recall": float((out_scores[labels == label] > threshold).float().mean()),
            "auroc": auroc(in_scores, out_scores[labels == label]),
        }
        for label in sorted(set(labels.tolist()))
    }


def evaluate(
    cfg: Mapping[str, Any],
    model: ReconstructionModel,
    datamodule: InMemoryDataModule,
    run_dir: Path,
    figures: bool = True,
    background: ReconstructionModel | None = None,
) -> EvaluationResult:
    """Score validation, test and OOD images, threshold, measure, and write scores.csv, ood.md and
    (with `figures` and ood.plots) the figures into run_dir. Returns the `ood/...` metrics."""
    check_settings(cfg, model.anomaly_scores, datamodule.name)
    if background is not None:
        check_background(model, background)
    count = cfg.get("max_images") or None
    in_sets = {split: evenly_spaced(datamodule.images(split), count) for split in ("val", "test")}
    out_sets = ood_sets(
        list(cfg["sets"]), datamodule, count, cfg.get("seed", 0), cfg.get("noise_amplitude", 0.5)
    )
    labels = {"val": 0, "test": 0, **dict.fromkeys(out_sets, 1)}
    timings: dict[str, float] = {}
    scored = {
        name: score_images(
            model,
            images,
            cfg.get("batch_size", 500),
            cfg.get("samples", 0),
            cfg.get("regret_steps", 0),
            timings,
        )
        for name, images in {**in_sets, **out_sets}.items()
    }
    if background is not None:  # scored like the model, on the same images
        started = time.perf_counter()
        for name, images in {**in_sets, **out_sets}.items():
            scored[name]["likelihood_ratio"] = likelihood_ratio(
                scored[name], score_images(background, images, cfg.get("batch_size", 500))
            )
        timings["background"] = time.perf_counter() - started
    # DoSE: the typicality of each image's scores, by densities fitted on validation images only.
    started = time.perf_counter()
    others = {name: values for name, values in scored.items() if name != "val"}
    scored["val"]["dose"], dose = dose_scores(scored["val"], others, cfg.get("dose_statistics"))
    for name, values in dose.items():
        scored[name]["dose"] = values
    timings["dose"] = time.perf_counter() - started
    neighbours = cfg.get("neighbours") or {}
    if neighbours.get("k", 0) > 0:  # model-free: the training images' own neighbourhoods
        started = time.perf_counter()
        reference = evenly_spaced(datamodule.images("train"), neighbours.get("reference_images"))
        nearest = TrainingNeighbours(reference.to(model.device), neighbours["k"])
        for name, images in {**in_sets, **out_sets}.items():
            scored[name].update(nearest(images))
        timings["neighbours"] = time.perf_counter() - started
    counted = sum(len(next(iter(values.values()))) for values in scored.values())
    started = time.perf_counter()
    timed_images = in_sets["test"][:1000]
    png_lengths(timed_images)  # timed afresh: png_bits keeps the lengths it has computed
    timings["png_bits"] = (time.perf_counter() - started) * counted / len(timed_images)
    score = cfg["score"]
    threshold_cfg = cfg["threshold"]
    method = threshold_cfg["method"]
    threshold = choose_threshold(
        method, scored["val"][score], threshold_cfg.get("percentile", 99.0), threshold_cfg.get("value")
    )
    metrics: dict[str, Any] = {"ood/score": score, "ood/threshold_method": method}
    for name, seconds in score_costs(list(scored["test"]), timings, cfg.get("dose_statistics")).items():
        metrics[f"{COST}{name}"] = seconds / counted * 1000
    if threshold is not None:
        metrics["ood/threshold"] = threshold
    results, aurocs, thresholds, classwise = {}, {}, {}, {}
    classes = ood_set_classes(list(out_sets), datamodule, count)
    in_test = scored["test"]
    for name in out_sets:
        out = scored[name]
        # Labels choose best_f1 thresholds: an upper bound, never used as the run's threshold.
        thresholds[name] = (
            threshold if threshold is not None else best_f1_threshold(in_test[score], out[score])
        )
        results[name] = detection_metrics(in_test[score], out[score], thresholds[name])
        aurocs[name] = {key: auroc(in_test[key], out[key]) for key in in_test}
        upper = detection_metrics(in_test[score], out[score], best_f1_threshold(in_test[score], out[score]))
        for key, value in results[name].items():
            metrics[f"ood/{name}/{key}"] = value
        metrics[f"ood/{name}/f1_ood_best_f1_upper_bound"] = upper["f1_ood"]
        if method == "best_f1":
            metrics[f"ood/{name}/threshold_best_f1_upper_bound"] = thresholds[name]
        for key, value in aurocs[name].items():
            metrics[f"ood/{name}/auroc_{key}"] = value
        if name in classes:  # report 004's "small group of OOD points not detected": which classes
            classwise[name] = by_class(in_test[score], out[score], thresholds[name], *classes[name])
            for class_name, measured in classwise[name].items():
                for key, value in measured.items():
                    metrics[f"ood/{name}/{key}_by_class/{class_name}"] = value

    if method == "percentile":
        how = (
            f"the {threshold_cfg.get('percentile', 99.0):g}th percentile of in-distribution validation scores"
        )
    elif method == "fixed":
        how = "fixed (ood.threshold.value)"
    else:
        how = "best_f1 per set, chosen WITH the OOD labels: an upper bound, not a detector"
    shown = f"{threshold:.6g}" if threshold is not None else "per set"
    header = (
        f"Score `{score}` (higher = more anomalous); an image is called OOD when its score > {shown}: {how}."
    )
    sizes = {name: len(values[score]) for name, values in scored.items()}
    (run_dir / "ood.md").write_text(
        ood_report(
            datamodule.name,
            results,
            sizes,
            aurocs,
            header,
            classwise,
            {key.removeprefix(COST): value for key, value in metrics.items() if key.startswith(COST)},
        )
    )
    indices = {
        split: evenly_spaced_indices(len(datamodule.images(split)), count) for split in ("val", "test")
    }
    indices |= ood_set_indices(list(out_sets), datamodule, count)
    write_scores_csv(run_dir / "scores.csv", scored, labels, indices)

    if not (figures and cfg.get("plots", True)):
        return EvaluationResult(metrics)
    limit = cfg.get("plot_points", 2000)

    def roc() -> Path:
        labelled_sets = {name: labelled(in_test[score], scored[name][score]) for name in out_sets}
        return figures_module.roc_curves(labelled_sets, run_dir / "ood_roc.png", score)

    def histograms() -> Path:
        return figures_module.score_histograms(
            {"val": scored["val"][score], "test": in_test[score]},
            {name: scored[name][score] for name in out_sets},
            thresholds,
            run_dir / "ood_histograms.png",
            score,
        )

    def latent() -> Path:
        codes = {
            name: latent_codes(model, evenly_spaced(images, limit))
            for name, images in {**in_sets, **out_sets}.items()
        }
        predicted = {
            name: (
                (evenly_spaced(in_test[score], limit) > thresholds[name]).numpy(),
                (evenly_spaced(scored[name][score], limit) > thresholds[name]).numpy(),
            )
            for name in out_sets
        }
        return figures_module.latent_ood(codes, predicted, run_dir / "ood_latent.png")

    return EvaluationResult(metrics, figures_module.drawn([roc, histograms, latent], run_dir))

"""Anomaly and out-of-distribution (OOD) detection after testing: per-image scores of validation,
test and OOD images, a threshold from held-out in-distribution validation scores (never OOD data),
the detection metrics, scores.csv, ood.md (report 004's Table 2) and figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.data.memory import InMemoryDataModule
from src.data.ood_sets import ood_sets
from src.errors import ConfigValueError
from src.evaluation.base import EvaluationContext, EvaluationResult
from src.evaluation.detection import (
    auroc,
    best_f1_threshold,
    choose_threshold,
    detection_metrics,
    labelled,
)
from src.evaluation.scoring import latent_codes, score_images
from src.models.base import ReconstructionModel
from src.reporting import figures as figures_module
from src.reporting.tables import ood_report, write_scores_csv


class OODDetection:
    """The `ood` evaluation, configured by the run config's key `settings` (default `ood`: the
    group conf/ood/<data>.yaml), read when it runs, so that src.eval's overrides of it apply."""

    def __init__(self, settings: str = "ood") -> None:
        self.settings = settings

    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        settings = OmegaConf.select(context.config, self.settings)
        if settings is None:
            raise ConfigValueError(f"evaluations.ood.settings={self.settings!r} names no key of the config")
        if not settings.get("enabled", True):
            return EvaluationResult()
        return evaluate(settings, model, datamodule, context.run_dir, context.figures)


def evaluate(
    cfg: Mapping[str, Any],
    model: ReconstructionModel,
    datamodule: InMemoryDataModule,
    run_dir: Path,
    figures: bool = True,
) -> EvaluationResult:
    """Score validation, test and OOD images, threshold, measure, and write scores.csv, ood.md and
    (with `figures` and ood.plots) the figures into run_dir. Returns the `ood/...` metrics."""
    count = cfg.get("max_images") or None
    in_sets = {"val": datamodule.images("val")[:count], "test": datamodule.images("test")[:count]}
    out_sets = ood_sets(
        list(cfg["sets"]), datamodule, count, cfg.get("seed", 0), cfg.get("noise_amplitude", 0.5)
    )
    labels = {"val": 0, "test": 0, **dict.fromkeys(out_sets, 1)}
    scored = {
        name: score_images(model, images, cfg.get("batch_size", 500), cfg.get("samples", 0))
        for name, images in {**in_sets, **out_sets}.items()
    }
    score = cfg["score"]
    if score not in scored["test"]:
        raise ConfigValueError(
            f"ood.score={score!r} is not a score of this model; choose from {list(scored['test'])}"
            + (" (neg_elbo_iw needs ood.samples > 0)" if "_iw" in score else "")
        )
    threshold_cfg = cfg["threshold"]
    method = threshold_cfg["method"]
    threshold = choose_threshold(
        method, scored["val"][score], threshold_cfg.get("percentile", 99.0), threshold_cfg.get("value")
    )
    metrics: dict[str, Any] = {"ood/score": score, "ood/threshold_method": method}
    if threshold is not None:
        metrics["ood/threshold"] = threshold
    results, aurocs, thresholds = {}, {}, {}
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
    (run_dir / "ood.md").write_text(ood_report(datamodule.name, results, sizes, aurocs, header))
    write_scores_csv(run_dir / "scores.csv", scored, labels)

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
            name: latent_codes(model, images[:limit]) for name, images in {**in_sets, **out_sets}.items()
        }
        predicted = {
            name: (
                (in_test[score][:limit] > thresholds[name]).numpy(),
                (scored[name][score][:limit] > thresholds[name]).numpy(),
            )
            for name in out_sets
        }
        return figures_module.latent_ood(codes, predicted, run_dir / "ood_latent.png")

    return EvaluationResult(metrics, figures_module.drawn([roc, histograms, latent], run_dir))

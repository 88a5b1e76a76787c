"""Anomaly and out-of-distribution (OOD) detection after testing: per-image scores of validation,
test and OOD images, a threshold from held-out in-distribution validation scores (never OOD data),
the detection metrics, scores.csv, ood.md (report 004's Table 2) and figures."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src.data.memory import InMemoryDataModule
from src.data.ood_sets import TORCHVISION_SETS, OODSet, evenly_spaced, evenly_spaced_indices, ood_sets
from src.data.torchvision_sets import data_root, load_torchvision_images
from src.errors import ConfigValueError
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.evaluation.detection import (
    auroc,
    best_f1_threshold,
    choose_threshold,
    detection_metrics,
    labelled,
)
from src.evaluation.neighbours import NEIGHBOUR_SCORES
from src.evaluation.scorer import OODSettings, Scorer
from src.evaluation.scoring import latent_codes, png_seconds_per_image
from src.files import write_text_atomic
from src.models.base import ReconstructionModel
from src.models.members import MemberModels
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
        if not settings.enabled:
            return
        settings.check(model_class.anomaly_scores, str(config.data.get("name")))
        for name in (name for name in settings.sets if name in TORCHVISION_SETS):
            if config.data.get("dataset") not in TORCHVISION_SETS.values():
                raise ConfigValueError(
                    f"OOD set {name!r} needs 28x28 images; remove it from ood.sets for {config.data.name}"
                )
            # Present, or downloaded now: a missing OOD set stops the run before training, not after.
            root = data_root(config.data.get("root"))
            load_torchvision_images(TORCHVISION_SETS[name], root, train=False, download=config.data.download)
        if settings.background is not None and not Path(settings.background).is_file():
            raise ConfigValueError(
                f"ood.background={settings.background} does not exist: train the background model first "
                "(experiment=ood_mnist_vae_background) and give its checkpoints/last.ckpt, or set it null"
            )

    def _settings(self, config: DictConfig) -> OODSettings:
        settings = OmegaConf.select(config, self.settings)
        if settings is None:
            raise ConfigValueError(f"evaluations.ood.settings={self.settings!r} names no key of the config")
        return OODSettings.of(OmegaConf.to_container(settings, resolve=True))

    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        settings = self._settings(context.config)
        if not settings.enabled:
            return EvaluationResult()
        background = _background(settings, context, model.device)
        return evaluate(settings, model, datamodule, context.run_dir, context.figures, background)

    @torch.no_grad()
    def evaluate_members(
        self, members: MemberSet, datamodule: InMemoryDataModule, contexts: list[EvaluationContext]
    ) -> list[EvaluationResult]:
        """Every member's evaluation, the image sets built once and the deterministic pass over them
        made for all members together (vmapped); the rest (sampled scores, DoSE, tables, files)
        member by member. Members whose settings differ are evaluated one by one."""
        every = [self._settings(context.config) for context in contexts]
        settings = every[0]
        if any(other != settings for other in every):
            return [self(members.model(index), datamodule, context) for index, context in enumerate(contexts)]
        if not settings.enabled:
            return [EvaluationResult() for _ in contexts]
        final = members.final
        settings.check(final.template.anomaly_scores, datamodule.name)
        images = ood_images(settings, datamodule)
        started = time.perf_counter()
        passes = member_pass_scores(final, images.all(), settings.batch_size)
        seconds = (time.perf_counter() - started) / len(contexts)
        results = []
        for index, context in enumerate(contexts):
            model = members.model(index)
            background = _background(settings, context, model.device)
            prepared = PreparedSets(images.in_sets, images.out_sets, passes[index], seconds)
            results.append(
                evaluate(settings, model, datamodule, context.run_dir, context.figures, background, prepared)
            )
        return results


def _background(
    settings: OODSettings, context: EvaluationContext, device: torch.device
) -> ReconstructionModel | None:
    """The background model of the likelihood ratio (ood.background), loaded, or None."""
    if settings.background is None:
        return None
    if context.load_model is None:
        raise ConfigValueError("ood.background is set, but this run gives its evaluations no model loader")
    return context.load_model(Path(settings.background)).to(device).eval()


@dataclass
class PreparedSets:
    """The image sets of an OOD evaluation (`in_sets`: val and test; `out_sets`: the OOD sets) and,
    when already computed for every member at once, the deterministic pass's scores of each set
    (`pass_scores`) and the seconds of that pass per member."""

    in_sets: dict[str, torch.Tensor]
    out_sets: dict[str, OODSet]
    pass_scores: dict[str, dict[str, torch.Tensor]] | None = None
    pass_seconds: float = 0.0

    def all(self) -> dict[str, torch.Tensor]:
        """Every set's images by name: val, test, then the OOD sets."""
        return {**self.in_sets, **{name: ood_set.images for name, ood_set in self.out_sets.items()}}


def ood_images(settings: OODSettings, datamodule: InMemoryDataModule) -> PreparedSets:
    """The validation and test images (evenly spaced down to ood.max_images) and the OOD sets."""
    count = settings.max_images
    in_sets = {split: evenly_spaced(datamodule.images(split), count) for split in ("val", "test")}
    out_sets = ood_sets(list(settings.sets), datamodule, count, settings.seed, settings.noise_amplitude)
    return PreparedSets(in_sets, out_sets)


def member_pass_scores(
    members: MemberModels, images: Mapping[str, torch.Tensor], batch_size: int
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """For each member, the anomaly scores of its deterministic pass (ReconstructionModel.scores)
    over each set of `images`, in batches of at most `batch_size` images for all members at once."""
    wanted = members.template.anomaly_scores
    per_set: dict[str, dict[str, torch.Tensor]] = {}
    for name, values in images.items():
        scores = members.call_batched(ReconstructionModel.scores, values, batch_size)
        per_set[name] = {score: value.double().cpu() for score, value in scores.items() if score in wanted}
    return [
        {name: {score: value[index] for score, value in scores.items()} for name, scores in per_set.items()}
        for index in range(members.count)
    ]


# metrics.json keys of each score's cost: seconds per 1000 images (wall-clock time: "time" marks
# keys that no two runs share).
COST = "ood/time_per_1000_images/"


def score_costs(names: list[str], timings: Mapping[str, float], statistics: list[str]) -> dict[str, float]:
    """The seconds each score took over all scored images: what it needs of the deterministic pass
    (`pass`), the importance-weighted bound, the regret, the background model, the PNG lengths and
    DoSE's densities (`statistics`: the scores it models), from the scorer's timings."""
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
            costs[name] = (
                timings["pass"]
                + timings["dose"]
                + sum(timings.get(extra.get(s, ""), 0.0) for s in statistics)
            )
        else:
            base = name.removesuffix("_ic")
            costs[name] = timings["pass"] + timings.get(extra.get(base, ""), 0.0)
            costs[name] += timings["png_bits"] if name.endswith("_ic") else 0.0
    return costs


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


def score_sets(
    scorer: Scorer,
    images: Mapping[str, torch.Tensor],
    pass_scores: Mapping[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Every score of every image of each set (`val`, `test` and the OOD sets; `pass_scores`: the
    deterministic pass's scores of each, when already computed), `dose` from the validation
    scores, and the number of images scored; the PNG-length cost is timed on up to 1000 test images
    (once per process: png_bits keeps the lengths it has computed)."""
    scored = {
        name: scorer(values, None if pass_scores is None else pass_scores[name])
        for name, values in images.items()
    }
    others = {name: values for name, values in scored.items() if name != "val"}
    scored["val"]["dose"], dose = scorer.dose(scored["val"], others)
    for name, values in dose.items():
        scored[name]["dose"] = values
    counted = sum(len(next(iter(values.values()))) for values in scored.values())
    scorer.timings["png_bits"] = png_seconds_per_image(images["test"][:1000]) * counted
    return scored, counted


def detection(
    settings: OODSettings, scored: Mapping[str, Mapping[str, torch.Tensor]], out_sets: Mapping[str, OODSet]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The threshold (from validation scores) and, per OOD set against the test images, the
    detection metrics, every score's AUROC and the per-class readings: the `ood/*` metrics, and
    the tables and thresholds behind them (`results`, `aurocs`, `classwise`, `thresholds`)."""
    score, method = settings.score, settings.threshold.method
    threshold = choose_threshold(
        method, scored["val"][score], settings.threshold.percentile, settings.threshold.value
    )
    metrics: dict[str, Any] = {"ood/score": score, "ood/threshold_method": method}
    if threshold is not None:
        metrics["ood/threshold"] = threshold
    tables: dict[str, Any] = {
        "results": {},
        "aurocs": {},
        "thresholds": {},
        "classwise": {},
        "threshold": threshold,
    }
    in_test = scored["test"]
    for name, ood_set in out_sets.items():
        out = scored[name]
        # Labels choose best_f1 thresholds: an upper bound, never used as the run's threshold.
        upper_threshold = best_f1_threshold(in_test[score], out[score])
        chosen = threshold if threshold is not None else upper_threshold
        tables["thresholds"][name] = chosen
        tables["results"][name] = results = detection_metrics(in_test[score], out[score], chosen)
        tables["aurocs"][name] = aurocs = {key: auroc(in_test[key], out[key]) for key in in_test}
        upper = detection_metrics(in_test[score], out[score], upper_threshold)
        for key, value in results.items():
            metrics[f"ood/{name}/{key}"] = value
        metrics[f"ood/{name}/f1_ood_best_f1_upper_bound"] = upper["f1_ood"]
        if method == "best_f1":
            metrics[f"ood/{name}/threshold_best_f1_upper_bound"] = chosen
        for key, value in aurocs.items():
            metrics[f"ood/{name}/auroc_{key}"] = value
        if ood_set.classes is not None:  # report 004's "small group of OOD points not detected": which
            tables["classwise"][name] = classwise = by_class(
                in_test[score], out[score], chosen, *ood_set.classes
            )
            for class_name, measured in classwise.items():
                for key, value in measured.items():
                    metrics[f"ood/{name}/{key}_by_class/{class_name}"] = value
    return metrics, tables


def _threshold_header(settings: OODSettings, threshold: float | None) -> str:
    method = settings.threshold.method
    if method == "percentile":
        how = f"the {settings.threshold.percentile:g}th percentile of in-distribution validation scores"
    elif method == "fixed":
        how = "fixed (ood.threshold.value)"
    else:
        how = "best_f1 per set, chosen WITH the OOD labels: an upper bound, not a detector"
    shown = f"{threshold:.6g}" if threshold is not None else "per set"
    return (
        f"Score `{settings.score}` (higher = more anomalous); an image is called OOD when its score > "
        f"{shown}: {how}."
    )


def evaluate(
    settings: OODSettings,
    model: ReconstructionModel,
    datamodule: InMemoryDataModule,
    run_dir: Path,
    figures: bool = True,
    background: ReconstructionModel | None = None,
    prepared: PreparedSets | None = None,
) -> EvaluationResult:
    """Score validation, test and OOD images (`Scorer`), threshold, measure, and write scores.csv,
    ood.md and (with `figures` and ood.plots) the figures into run_dir. Returns the `ood/...` metrics.
    `prepared`: the sets (and their pass's scores) when built for several members at once."""
    settings.check(model.anomaly_scores, datamodule.name)
    count = settings.max_images
    prepared = prepared if prepared is not None else ood_images(settings, datamodule)
    out_sets = prepared.out_sets
    training = datamodule.images("train") if settings.neighbours.k > 0 else None
    scorer = Scorer(model, settings, background, training)
    if prepared.pass_scores is not None:
        scorer.timings["pass"] = prepared.pass_seconds
    scored, counted = score_sets(scorer, prepared.all(), prepared.pass_scores)
    metrics, tables = detection(settings, scored, out_sets)
    statistics = scorer.statistics(scored["val"])
    for name, seconds in score_costs(list(scored["test"]), scorer.timings, statistics).items():
        metrics[f"{COST}{name}"] = seconds / counted * 1000
    sizes = {name: len(values[settings.score]) for name, values in scored.items()}
    write_text_atomic(
        run_dir / "ood.md",
        ood_report(
            datamodule.name,
            tables["results"],
            sizes,
            tables["aurocs"],
            _threshold_header(settings, tables["threshold"]),
            tables["classwise"],
            {key.removeprefix(COST): value for key, value in metrics.items() if key.startswith(COST)},
        ),
    )
    indices = {
        split: evenly_spaced_indices(len(datamodule.images(split)), count) for split in ("val", "test")
    }
    indices |= {name: ood_set.indices for name, ood_set in out_sets.items()}
    labels = {"val": 0, "test": 0, **dict.fromkeys(out_sets, 1)}
    write_scores_csv(run_dir / "scores.csv", scored, labels, indices)
    if not (figures and settings.plots):
        return EvaluationResult(metrics)
    return EvaluationResult(
        metrics, ood_figures(settings, model, prepared.all(), scored, tables["thresholds"], run_dir)
    )


def ood_figures(
    settings: OODSettings,
    model: ReconstructionModel,
    images: Mapping[str, torch.Tensor],
    scored: Mapping[str, Mapping[str, torch.Tensor]],
    thresholds: Mapping[str, float],
    run_dir: Path,
) -> list[Path]:
    """ood_roc.png, ood_histograms.png and ood_latent.png (those that can be drawn)."""
    score, limit, in_test = settings.score, settings.plot_points, scored["test"]
    out_names = [name for name in images if name not in ("val", "test")]

    def roc() -> Path:
        labelled_sets = {name: labelled(in_test[score], scored[name][score]) for name in out_names}
        return figures_module.roc_curves(labelled_sets, run_dir / "ood_roc.png", score)

    def histograms() -> Path:
        return figures_module.score_histograms(
            {"val": scored["val"][score], "test": in_test[score]},
            {name: scored[name][score] for name in out_names},
            thresholds,
            run_dir / "ood_histograms.png",
            score,
        )

    def latent() -> Path:
        codes = {name: latent_codes(model, evenly_spaced(values, limit)) for name, values in images.items()}
        predicted = {
            name: (
                (evenly_spaced(in_test[score], limit) > thresholds[name]).numpy(),
                (evenly_spaced(scored[name][score], limit) > thresholds[name]).numpy(),
            )
            for name in out_names
        }
        return figures_module.latent_ood(codes, predicted, run_dir / "ood_latent.png")

    return figures_module.drawn([roc, histograms, latent], run_dir)

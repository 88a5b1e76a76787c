"""Figures written into each run folder (PNG). Plain matplotlib, Agg backend (no screen needed)."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from src.files import atomic_path


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=100)
    plt.close(fig)
    return path


def _tiled(images: torch.Tensor, columns: int) -> np.ndarray:
    """Images (N, 1, H, W) in [0, 1] tiled `columns` to a row (torchvision's make_grid), a white
    gap of about a fourteenth of an image between them, the last row filled up with white."""
    images = images.detach().cpu().float()
    missing = -len(images) % columns or (columns if len(images) == 0 else 0)
    images = torch.cat([images, torch.ones(missing, *images.shape[1:])])
    padding = max(1, round(images.shape[-1] / 14))
    return make_grid(images, nrow=columns, padding=padding, pad_value=1.0)[0].numpy()


def image_rows(rows: Sequence[torch.Tensor], row_titles: Sequence[str], path: Path) -> Path:
    """One row of images per tensor (N, 1, H, W), values in [0, 1], e.g. inputs over reconstructions."""
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.2 * columns + 1, 1.3 * len(rows)), squeeze=False)
    for (ax,), images, title in zip(axes, rows, row_titles, strict=True):
        ax.imshow(_tiled(images, columns), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(title, rotation=0, ha="right", va="center")
    return save(fig, path)


def image_grid(images: torch.Tensor, path: Path, title: str, columns: int = 8) -> Path:
    """A grid of images (N, 1, H, W) in [0, 1], e.g. samples from the prior."""
    rows = -(-len(images) // columns)
    fig, ax = plt.subplots(figsize=(columns, rows + 0.4))
    ax.imshow(_tiled(images, columns), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    fig.suptitle(title)
    return save(fig, path)


def bottleneck_distribution(codes: torch.Tensor, path: Path, sigmas: torch.Tensor | None = None) -> Path:
    """Report 000's Fig. 10: a histogram (1-D) or scatter (2-D) of bottleneck values over a set,
    and for the VAE the histogram of the posterior standard deviations beside it."""
    panels = 2 if sigmas is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    codes = codes.detach().cpu()
    if codes.shape[1] == 1:
        ax.hist(codes[:, 0].numpy(), bins=50)
        ax.set_xlabel("bottleneck value")
        ax.set_ylabel("images")
    else:
        ax.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), s=4, alpha=0.5)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    ax.set_title("bottleneck values (test set)")
    if sigmas is not None:
        ax = axes[0, 1]
        ax.hist(sigmas.detach().cpu().flatten().numpy(), bins=50)
        ax.set_xlabel("posterior standard deviation sigma")
        ax.set_title("sigma (test set)")
    return save(fig, path)


def loss_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Epoch-level train/loss and val/loss against the epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train/loss", "val/loss"):
        points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        if points:
            epochs, values = zip(*points, strict=True)
            ax.plot(epochs, values, label=key, marker="." if len(points) < 50 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return save(fig, path)


def sweep_summary(groups: dict[str, dict], path: Path, headline: Sequence[str] = ()) -> Path:
    """Charts of a sweep, one colour per group: the frequency of each categorical test result with
    its 95% Wilson interval (bars; the `headline` ones, else the first two); the mean of each
    numeric `headline` result with its 95% t interval (an interval plot; without headline results,
    the numeric test metrics); and with OOD results, the performance profile: the fraction of
    runs x OOD sets above each AUROC. Only test results are drawn, not the settings a run reports
    (such as ood/score)."""
    drawable = [
        key
        for key in dict.fromkeys(k for g in groups.values() for k in g["counts"])
        if key.startswith("test/") and max(len(g["counts"].get(key, {})) for g in groups.values()) <= 12
    ]
    categorical = ([key for key in headline if key in drawable] or drawable)[:2]
    numbers = {k for g in groups.values() for k in g["metrics"]}
    # Per-set OOD results are drawn together in the profile, not one panel each.
    numeric = [key for key in headline if key in numbers and not key.startswith("ood/")] or [
        key for key in sorted(numbers) if key.startswith("test/")
    ]
    numeric = numeric[:6]
    profiled = any("auroc_profile" in g for g in groups.values())
    panels = categorical + numeric + (["performance profile"] if profiled else []) or ["(no results)"]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 4 * len(panels)), 4.5), squeeze=False)
    width = 0.8 / max(1, len(groups))
    for ax, key in zip(axes[0], panels, strict=True):
        for offset, (name, group) in enumerate(groups.items()):
            # "$" escaped: an override such as ood.background=.../${seed}/... is no mathtext.
            label = f"{name} (n={group['n_jobs']})".replace("$", r"\$")
            colour = f"C{offset % 10}"
            if key in categorical:
                labels = list(group["counts"].get(key, {}))
                heights = [group["frequencies"][key][c] for c in labels]
                intervals = [group["ci95"][key][c] for c in labels]
                # Clamped: at a frequency of 0 or 1, rounding can put the bound a hair past it.
                errors = [
                    [max(0.0, h - low) for h, (low, _) in zip(heights, intervals, strict=True)],
                    [max(0.0, high - h) for h, (_, high) in zip(heights, intervals, strict=True)],
                ]
                positions = [i + (offset - (len(groups) - 1) / 2) * width for i in range(len(labels))]
                ax.bar(positions, heights, width, yerr=errors, capsize=3, label=label, color=colour)
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
                ax.set_ylabel("frequency (95% Wilson interval)")
            elif key in numeric and key in group["metrics"]:
                stats = group["metrics"][key]
                low, high = stats["ci95"]
                errors = [[max(0.0, stats["mean"] - low)], [max(0.0, high - stats["mean"])]]
                ax.errorbar(
                    [offset], [stats["mean"]], yerr=errors, fmt="o", capsize=4, label=label, color=colour
                )
                ax.set_xticks([])
                ax.set_ylabel("mean over seeds (95% t interval)")
            elif key == "performance profile" and "auroc_profile" in group:
                profile = group["auroc_profile"]
                ax.step(profile["thresholds"], profile["above"], where="post", label=label, color=colour)
                ax.set_xlabel("AUROC threshold")
                ax.set_ylabel("fraction of runs x OOD sets above it")
        ax.set_title(key)
    axes[0, 0].legend(fontsize=7)
    return save(fig, path)


def roc(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """False and true positive rates (OOD positive) and the AUROC of `scores`, scaled into [0, 1]
    in float64 first: torchmetrics applies a sigmoid outside [0, 1], which ties large scores."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    scores = scores.double()
    unit = (scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-300)
    fpr, tpr, _ = binary_roc(unit, labels)
    return fpr, tpr, float(binary_auroc(unit, labels))


def roc_curves(labelled: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, score: str) -> Path:
    """ROC curve (OOD positive) of `score` for each OOD set; `labelled` maps a set to (scores, labels)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (scores, labels) in labelled.items():
        fpr, tpr, area = roc(scores, labels)
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} (AUROC {area:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (in-distribution called OOD)")
    ax.set_ylabel("true positive rate (OOD called OOD)")
    ax.set_title(f"ROC, score {score}")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def score_histograms(
    in_scores: dict[str, torch.Tensor],
    ood_scores: dict[str, torch.Tensor],
    thresholds: dict[str, float],
    path: Path,
    score: str,
) -> Path:
    """One panel per OOD set: histograms of the in-distribution (validation, test) and OOD scores on
    shared bins, with the decision threshold as a vertical line."""
    fig, axes = plt.subplots(1, len(ood_scores), figsize=(4.5 * len(ood_scores), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], ood_scores.items(), strict=True):
        together = torch.cat([*in_scores.values(), values]).numpy()
        low, high = np.percentile(together, [0, 99.5])
        bins = np.linspace(low, high if high > low else low + 1, 60)
        for label, scores in {
            **{f"in: {k}": v for k, v in in_scores.items()},
            f"OOD: {name}": values,
        }.items():
            ax.hist(scores.clamp(max=bins[-1]).numpy(), bins=bins, alpha=0.5, density=True, label=label)
        ax.axvline(thresholds[name], color="black", linestyle="--", label=f"threshold {thresholds[name]:.4g}")
        ax.set_xlabel(score)
        ax.set_title(name)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("density")
    return save(fig, path)


def _two_d(codes: dict[str, torch.Tensor], reference: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """2-D views of latent codes: the codes themselves (latent <= 2; a 1-D code is set against the
    image index) or their projection on the two principal axes of the `reference` set's codes."""
    width = next(iter(codes.values())).shape[1]
    if width == 1:
        return {k: np.stack([v[:, 0].numpy(), np.arange(len(v))], 1) for k, v in codes.items()}, [
            "z",
            "image",
        ]
    if width == 2:
        return {k: v.numpy() for k, v in codes.items()}, ["z[0]", "z[1]"]
    mean = codes[reference].mean(0)
    _, _, vh = torch.linalg.svd(codes[reference] - mean, full_matrices=False)
    return {k: ((v - mean) @ vh[:2].T).numpy() for k, v in codes.items()}, ["PC 1", "PC 2"]


def latent_ood(
    codes: dict[str, torch.Tensor], predicted: dict[str, tuple[np.ndarray, np.ndarray]], path: Path
) -> Path:
    """Report 004's Figs. 9-10: the latent codes of in-distribution test images and of each OOD set,
    coloured by the truth (left) and by the detector's decision (right); PCA for wider latents."""
    views, axis_names = _two_d(codes, "test")
    sets = list(predicted)
    fig, axes = plt.subplots(len(sets), 2, figsize=(10, 4.2 * len(sets)), squeeze=False)
    for row, name in zip(axes, sets, strict=True):
        inside, outside = views["test"], views[name]
        both = np.concatenate([inside, outside])
        truth = np.concatenate([np.zeros(len(inside), bool), np.ones(len(outside), bool)])
        flagged = np.concatenate(predicted[name])
        for ax, colour_by, title in ((row[0], truth, "true"), (row[1], flagged, "predicted")):
            ax.scatter(*both[~colour_by].T, s=3, alpha=0.4, color="tab:blue", label="in-distribution")
            ax.scatter(*both[colour_by].T, s=3, alpha=0.4, color="tab:orange", label="OOD")
            ax.set_title(f"{title}: test vs {name}")
            ax.set_xlabel(axis_names[0])
            ax.set_ylabel(axis_names[1])
            ax.legend(fontsize=7, markerscale=3)
    return save(fig, path)


FIGURE_ERRORS = "figure_errors.txt"


def drawn(draws: Sequence[Callable[[], Path]], folder: Path) -> list[Path]:
    """Draw each figure; one that cannot be drawn (say, a degenerate histogram) is skipped, its
    traceback appended to <folder>/figure_errors.txt, so that a figure never fails a run."""
    figures = []
    for draw in draws:
        try:
            figures.append(draw())
        except Exception:
            with (folder / FIGURE_ERRORS).open("a") as handle:
                handle.write(traceback.format_exc() + "\n")
            plt.close("all")
    return figures


@torch.no_grad()
def run_figures(model: Any, test_images: torch.Tensor, history: Sequence[dict], run_dir: Path) -> list[Path]:
    """The figures of every run: inputs over reconstructions, prior samples (generative models),
    the bottleneck distribution (latent <= 2; the VAE's posterior sigma beside it) and the loss
    curves (when there is a history); any that cannot be drawn is recorded instead (`drawn`)."""
    model.eval()
    shown = test_images[:8].to(model.device)

    def reconstructions() -> Path:
        return image_rows(
            [shown, model.reconstruct(shown)], ["input", "output"], run_dir / "reconstructions.png"
        )

    def samples() -> Path:
        drawn_samples = model.sample(64, generator=torch.Generator().manual_seed(0))
        return image_grid(drawn_samples, run_dir / "samples.png", "decoded samples z ~ N(0, I)")

    def bottleneck() -> Path:
        evaluated = model.encode_pass(test_images.to(model.device))
        return bottleneck_distribution(evaluated.code, run_dir / "bottleneck.png", evaluated.sigma)

    draws = [reconstructions]
    draws += [samples] if model.generative else []
    draws += [bottleneck] if model.hparams.latent_dim <= 2 else []
    draws += [lambda: loss_curves(history, run_dir / "loss_curves.png")] if history else []
    return drawn(draws, run_dir)


def samples_side_by_side(samples: dict[str, torch.Tensor], path: Path) -> Path:
    """The first 64 samples of each model as an 8x8 mosaic, one panel per model."""
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4.4), squeeze=False)
    for ax, (model, images) in zip(axes[0], samples.items(), strict=True):
        ax.imshow(make_grid(images[:64], nrow=8, pad_value=1.0)[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{model}: z ~ N(0, I)")
        ax.axis("off")
    return save(fig, path)

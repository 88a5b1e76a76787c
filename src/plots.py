"""Figures written into each run folder (PNG). Plain matplotlib, Agg backend (no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_rows(rows: Sequence[torch.Tensor], row_titles: Sequence[str], path: Path) -> Path:
    """One row of images per tensor (N, 1, H, W), values in [0, 1], e.g. inputs over reconstructions."""
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns + 1, 1.3 * len(rows)), squeeze=False)
    for axes_row, images, title in zip(axes, rows, row_titles, strict=True):
        for index, ax in enumerate(axes_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if index < len(images):
                ax.imshow(images[index, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes_row[0].set_ylabel(title, rotation=0, ha="right", va="center")
    return _save(fig, path)


def image_grid(images: torch.Tensor, path: Path, title: str, columns: int = 8) -> Path:
    """A grid of images (N, 1, H, W) in [0, 1], e.g. samples from the prior."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows + 0.4), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(images[index, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title)
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def sweep_summary(groups: dict[str, dict], path: Path) -> Path:
    """Bar charts of a sweep: the frequency of each categorical result with its 95% Wilson interval
    (one bar per group), or, when there is none, the mean ± std of the numeric test metrics."""
    categorical = [
        key
        for key in dict.fromkeys(k for g in groups.values() for k in g["counts"])
        if max(len(g["counts"].get(key, {})) for g in groups.values()) <= 12
    ][:2]
    numeric = [
        key
        for key in dict.fromkeys(k for g in groups.values() for k in g["metrics"])
        if key.startswith("test/")
    ][:6]
    panels = categorical or numeric or ["(no results)"]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 4 * len(panels)), 4.5), squeeze=False)
    width = 0.8 / max(1, len(groups))
    for ax, key in zip(axes[0], panels, strict=True):
        for offset, (name, group) in enumerate(groups.items()):
            if key in categorical:
                labels = list(group["counts"].get(key, {}))
                heights = [group["frequencies"][key][c] for c in labels]
                intervals = [group["ci95"][key][c] for c in labels]
                errors = [
                    [h - low for h, (low, _) in zip(heights, intervals, strict=True)],
                    [high - h for h, (_, high) in zip(heights, intervals, strict=True)],
                ]
                ax.set_ylabel("frequency (95% Wilson interval)")
            elif key in numeric and key in group["metrics"]:
                labels, heights = [key.removeprefix("test/")], [group["metrics"][key]["mean"]]
                errors = [group["metrics"][key]["std"]]
                ax.set_ylabel("mean ± std over seeds")
            else:
                continue
            positions = [i + (offset - (len(groups) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(positions, heights, width, yerr=errors, capsize=3, label=f"{name} (n={group['n_jobs']})")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(key)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)

"""Markdown and CSV tables: one Markdown table writer for every page (ood.md, summary.md, table1.md,
results pages) and the per-image scores.csv."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from src.errors import ConfigValueError
from src.files import atomic_path


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """The lines of a Markdown table. `align` holds one letter per column, `l` or `r` (default l)."""
    rule = ["---:" if align[index : index + 1] == "r" else "---" for index in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_scores_csv(
    path: Path,
    scored: Mapping[str, Mapping[str, torch.Tensor]],
    labels: Mapping[str, int],
    indices: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """One row per image: set, label (0 in-distribution, 1 OOD), index (the image's index in its
    source, from `indices`; without them, its position in its set), every score."""
    names = list(dict.fromkeys(name for scores in scored.values() for name in scores))
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "label", "index", *names])
        for set_name, scores in scored.items():
            columns = [scores[name].tolist() for name in names]
            positions = indices[set_name].tolist() if indices is not None else range(len(columns[0]))
            for index, row in zip(positions, zip(*columns, strict=True), strict=True):
                writer.writerow([set_name, labels[set_name], index, *(f"{value:.17g}" for value in row)])
    return path


def read_scores_csv(path: Path) -> dict[str, dict[str, list]]:
    """scores.csv by set: {set: {"label": [...], "index": [...], score: [...]}}, in file order."""
    scored: dict[str, dict[str, list]] = {}
    with path.open(newline="", errors="replace") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                columns = scored.setdefault(row.pop("set"), {})
                for name, value in row.items():
                    columns.setdefault(name, []).append(
                        int(value) if name in ("label", "index") else float(value)
                    )
        except (ValueError, TypeError, KeyError, csv.Error) as error:
            raise ConfigValueError(
                f"{path} is damaged at line {reader.line_num} ({type(error).__name__}: {error}): the run "
                "wrote it whole, so it was cut or edited; evaluate the run again (python -m src.eval)."
            ) from None
    return scored


def ood_report(
    data_name: str,
    results: Mapping[str, Mapping[str, float]],
    sizes: Mapping[str, int],
    aurocs: Mapping[str, Mapping[str, float]],
    header: str,
    by_class: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    costs: Mapping[str, float] | None = None,
) -> str:
    """ood.md: per OOD set report 004's Table 2 (label 0 in-distribution, 1 OOD) and, for a labelled
    OOD set, the recall and AUROC of each of its classes; then the AUROC of every score on every set (and,
    with `costs`, each score's seconds per 1000 images)."""
    lines = ["# OOD detection", "", header, ""]
    for name, metrics in results.items():
        rows = [
            [label, *(f"{metrics[f'{key}_{side}']:.4f}" for key in ("precision", "recall", "f1")), size]
            for label, side, size in ((0, "in", sizes["test"]), (1, "ood", sizes[name]))
        ]
        lines += [
            f"## {data_name} test (label 0) vs {name} (label 1)",
            "",
            f"AUROC {metrics['auroc']:.4f} · AUPR {metrics['aupr']:.4f} · "
            f"FPR at 95% TPR {metrics['fpr95']:.4f}",
            "",
            *markdown_table(["label", "precision", "recall", "f1-score", "support"], rows),
            "",
        ]
        if by_class and name in by_class:
            ordered = sorted(by_class[name].items(), key=lambda item: (item[1]["recall"], item[1]["auroc"]))
            rows = [[c, f"{m['recall']:.4f}", f"{m['auroc']:.4f}"] for c, m in ordered]
            lines += [
                f"Each {name} class: its recall (the share called OOD) and its AUROC against the "
                "in-distribution test images, lowest recall first:",
                "",
                *markdown_table(["class", "recall", "AUROC"], rows, "lrr"),
                "",
            ]
    score_names = list(next(iter(aurocs.values())))
    rows = [[name, *(f"{by_score[score]:.4f}" for score in score_names)] for name, by_score in aurocs.items()]
    if costs:
        rows.append(
            ["seconds per 1000 images", *(f"{costs.get(score, float('nan')):.3g}" for score in score_names)]
        )
    lines += ["## AUROC of every score", "", *markdown_table(["set", *score_names], rows)]
    return "\n".join(lines) + "\n"

"""Report 000's reading of a 2x2 solution off its weights (its tables for outputs 1-4).

With a 1-unit bottleneck z and one ReLU layer in the decoder (L3), each output logit is a
piecewise-linear function of z: the L3 units switch on and off at z = -bias/weight, and between
those points the logit is a line. The Heaviside output of neuron j flips where its logit crosses
zero: those crossings are its thresholds, found exactly, and the output between them is the
report's table. The `solution` evaluation gives, as `test/solution/*`:

- `bottleneck/<image>`: each image's bottleneck value;
- `thresholds/output<j>/<k>`: output j's k-th threshold, ascending (none for a constant output);
- `outputs/output<j>`: its Heaviside output left of, between and right of them (e.g. `0 1 0`);
- `consistent`: whether the tables, read at each image's bottleneck, give the model's own rounded
  outputs (a check of the reading, and of the sigmoid never sitting at 0.5 there);

and writes `solution.md`, the tables as the report draws them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from src.data.lines import LINES_2X2
from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.evaluation.initial_state import applies
from src.files import write_text_atomic
from src.models.base import ReconstructionModel
from src.reporting.tables import markdown_table


def output_thresholds(model: ReconstructionModel) -> list[tuple[list[float], list[int]]]:
    """Per output neuron: its thresholds on the bottleneck (ascending) and its Heaviside output in
    each of the len(thresholds) + 1 intervals they cut the line into."""
    first, _, last = model.net.decoder[:3]
    slope, offset = first.weight.detach().double().flatten(), first.bias.detach().double()
    readout, bias = last.weight.detach().double(), last.bias.detach().double()
    switches = sorted({float(-c / a) for a, c in zip(slope, offset, strict=True) if a != 0})
    bounds = [-math.inf, *switches, math.inf]
    tables = []
    for weights, constant in zip(readout, bias, strict=True):
        thresholds: list[float] = []
        for low, high in zip(bounds[:-1], bounds[1:], strict=True):
            # The units active inside (low, high), probed at a point inside it.
            if math.isfinite(low) and math.isfinite(high):
                inside = (low + high) / 2
            else:
                inside = high - 1 if math.isfinite(high) else (low + 1 if math.isfinite(low) else 0.0)
            active = (slope * inside + offset) > 0
            alpha = float((weights * slope * active).sum())
            beta = float((weights * offset * active).sum() + constant)
            # Half-open pieces: a crossing at a switch point belongs to the piece on its left.
            if alpha != 0 and low < -beta / alpha <= high:
                thresholds.append(-beta / alpha)
        # A point inside each interval the thresholds cut the line into.
        edges = [thresholds[0] - 1, *thresholds, thresholds[-1] + 1] if thresholds else [-1.0, 1.0]
        probes = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:], strict=True)]
        with torch.no_grad():
            latent = torch.tensor(probes, dtype=first.weight.dtype, device=first.weight.device)[:, None]
            logits = model.decode(latent).flatten(1)
        outputs = [int(value > 0) for value in logits[:, len(tables)]]
        # A logit that only touches zero does not flip the output: that point is no threshold.
        flips = [i for i in range(len(thresholds)) if outputs[i] != outputs[i + 1]]
        tables.append(([thresholds[i] for i in flips], [outputs[0], *(outputs[i + 1] for i in flips)]))
    return tables


def _region(value: float, thresholds: list[float]) -> int:
    return sum(value > threshold for threshold in thresholds)


def solution_markdown(codes: dict[str, float], tables: list[tuple[list[float], list[int]]]) -> str:
    """The report's tables: the bottleneck of each image, and per output neuron its intervals."""
    lines = ["# The solution read off the weights", "", "## Bottleneck values", ""]
    lines += markdown_table(["image", "bottleneck"], [[n, f"{v:.4g}"] for n, v in codes.items()], "lr")
    for index, (thresholds, outputs) in enumerate(tables, start=1):
        edges = ["-inf", *(f"{t:.4g}" for t in thresholds), "+inf"]
        intervals = [f"({low}, {high})" for low, high in zip(edges[:-1], edges[1:], strict=True)]
        lines += ["", f"## Output {index}", ""]
        lines += markdown_table(["BN", *intervals], [[f"output {index}", *outputs]], "l" + "r" * len(outputs))
    return "\n".join(lines) + "\n"


def solution_readings(
    codes: list[float], outputs: torch.Tensor, tables: list[tuple[list[float], list[int]]], run_dir: Path
) -> dict[str, float | str | bool]:
    """The metrics of the module docstring from each image's bottleneck value, the Heaviside
    outputs (images, pixels) and the output tables; writes solution.md into `run_dir`."""
    names = [LINES_2X2[i] for i in range(len(codes))]
    metrics: dict[str, float | str | bool] = {
        f"test/solution/bottleneck/{name}": code for name, code in zip(names, codes, strict=True)
    }
    for index, (thresholds, regions) in enumerate(tables, start=1):
        for rank, threshold in enumerate(thresholds, start=1):
            metrics[f"test/solution/thresholds/output{index}/{rank}"] = threshold
        metrics[f"test/solution/outputs/output{index}"] = " ".join(map(str, regions))
    read = torch.tensor(
        [[regions[_region(code, thresholds)] for thresholds, regions in tables] for code in codes],
        dtype=outputs.dtype,
    )
    metrics["test/solution/consistent"] = "yes" if torch.equal(read, outputs) else "no"
    write_text_atomic(
        run_dir / "solution.md", solution_markdown(dict(zip(names, codes, strict=True)), tables)
    )
    return metrics


def _codes_and_steps(model: ReconstructionModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.code(images).flatten(), model.reconstruct(images, "heaviside").flatten(1)


def _report_architecture(cfg: DictConfig) -> bool:
    # Report 000's 4-w-1-w-4: one ReLU hidden layer each side, a 1-unit bottleneck.
    return applies(cfg) and cfg.model.latent_dim == 1 and len(cfg.model.net.hidden_dims) == 1


class Solution:
    """The `solution` evaluation (module docstring) on the four 2x2 images; it reports nothing for
    other architectures than report 000's (a wider bottleneck, more hidden layers)."""

    @torch.no_grad()
    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        if not _report_architecture(context.config):
            return EvaluationResult()
        codes, outputs = _codes_and_steps(model, datamodule.images("test").to(model.device))
        return EvaluationResult(
            solution_readings(
                codes.double().cpu().tolist(), outputs.cpu(), output_thresholds(model), context.run_dir
            )
        )

    @torch.no_grad()
    def evaluate_members(
        self, members: MemberSet, datamodule: InMemoryDataModule, contexts: list[EvaluationContext]
    ) -> list[EvaluationResult]:
        """The members' bottleneck values and outputs in one pass; each one's tables off its weights."""
        if not _report_architecture(contexts[0].config):
            return [EvaluationResult() for _ in contexts]
        images = datamodule.images("test").to(members.final.device)
        codes, outputs = members.final.call(_codes_and_steps, images)
        codes, outputs = codes.double().cpu(), outputs.cpu()
        return [
            EvaluationResult(
                solution_readings(
                    codes[index].tolist(),
                    outputs[index],
                    output_thresholds(members.model(index)),
                    context.run_dir,
                )
            )
            for index, context in enumerate(contexts)
        ]

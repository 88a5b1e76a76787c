"""The convergence census: outcome classes, merge reasons, Wilson intervals and sweep summaries."""

from __future__ import annotations

import pytest
import torch

from src.analysis.sweep import summarise
from src.evaluation.census import classify_outcome, outcome_metrics
from src.evaluation.intervals import wilson_interval
from src.models.ca import ClassicalAutoencoder

INPUTS = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (torch.full((4, 4), 0.55), "all_gray"),
        (INPUTS * 0.8 + 0.1, "optimal"),
        (1 - INPUTS, "other"),  # distinct but wrong outputs
        (
            torch.stack(
                [INPUTS[0], INPUTS[1], (INPUTS[2] + INPUTS[3]) / 2, (INPUTS[2] + INPUTS[3]) / 2 + 0.05]
            ),
            "one_merged_pair",
        ),
        (torch.stack([INPUTS[0], INPUTS[0], INPUTS[2], INPUTS[2]]), "two_merged_pairs"),
        (torch.stack([INPUTS[0], INPUTS[0], INPUTS[0], INPUTS[3]]), "other"),  # three merged
    ],
)
def test_outcome_classes(outputs: torch.Tensor, expected: str) -> None:
    assert classify_outcome(INPUTS, outputs) == expected


def test_one_gray_image_is_not_all_gray() -> None:
    outputs = INPUTS.clone()
    outputs[0] = 0.5
    assert classify_outcome(INPUTS, outputs) == "other"


def test_dead_first_layer_merges_two_images_and_is_named() -> None:
    """Report 000's failure: two inputs give negative values in every first-layer neuron."""
    model = ClassicalAutoencoder({"_target_": "src.models.nets.DenseNet", "hidden_dims": [2]}, [1, 2, 2])
    first = model.net.encoder[1]
    with torch.no_grad():
        # Pixel order UL, UR, BL, BR: 0011 and 1010 both get -1 in both units; 1100 and 0101 do not.
        first.weight.copy_(torch.tensor([[1.0, 2.0, -1.0, -1.0], [1.0, 2.0, -1.0, -1.0]]))
        first.bias.zero_()
        model.bottleneck.weight.fill_(1.0)
        decoder_in, decoder_out = model.net.decoder[0], model.net.decoder[2]
        decoder_in.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        decoder_in.bias.zero_()
        decoder_out.weight.copy_(torch.tensor([[4.0, 0.0], [-4.0, 0.0], [-1.0, 0.0], [2.0, 0.0]]))
        decoder_out.bias.copy_(torch.tensor([-5.0, 3.0, 3.0, -1.0]))
    images = INPUTS.view(4, 1, 2, 2)
    metrics = outcome_metrics(model, images)
    assert metrics["test/outcome"] == "one_merged_pair"
    assert metrics["test/merged_images"] == "0011=1010"
    assert metrics["test/merge_reason"] == "encoder.2 ReLU: all units zero"
    assert metrics["test/gray_pixels"] == 0  # outputs 0.007, 0.95, 0.27, 0.047, 0.73, ...: none near 0.5


def test_wilson_interval_matches_published_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 0/10 -> [0, 0.2775]; 5/10 -> [0.2366, 0.7634]; 81/263.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_of_known_jobs() -> None:
    jobs = [
        {
            "dir": str(i),
            "overrides": [f"seed={i}"],
            "error": None,
            "metrics": {"test/outcome": outcome, "test/recon_mse": mse, "seed": i},
        }
        for i, (outcome, mse) in enumerate([("optimal", 0.0), ("all_gray", 0.25), ("optimal", 0.05)])
    ]
    jobs.append({"dir": "3", "overrides": ["seed=3"], "metrics": None, "error": "ValueError: boom"})
    summary = summarise(jobs)
    assert (summary["n_jobs"], summary["n_failed"]) == (4, 1)
    assert summary["failed"] == {"3": "ValueError: boom"}
    assert summary["counts"]["test/outcome"] == {
        "all_gray": 1,
        "optimal": 2,
        "one_merged_pair": 0,
        "two_merged_pairs": 0,
        "other": 0,
    }
    assert summary["frequencies"]["test/outcome"]["optimal"] == pytest.approx(2 / 3)
    assert summary["ci95"]["test/outcome"]["optimal"] == pytest.approx(list(wilson_interval(2, 3)))
    stats = dict(summary["metrics"]["test/recon_mse"])
    # 0.1 +- t(0.975, 2) * s / sqrt(3), t(0.975, 2) = 4.302653
    assert stats.pop("ci95") == pytest.approx(
        [0.1 - 4.302653 * 0.1322876 / 3**0.5, 0.1 + 4.302653 * 0.1322876 / 3**0.5]
    )
    assert stats == pytest.approx({"mean": 0.1, "std": 0.1322876, "min": 0.0, "max": 0.25, "n": 3})
    assert "seed" not in summary["metrics"]

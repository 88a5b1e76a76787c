"""Report 000's initial-state explanations (src/evaluation/initial_state.py) and the solution read
off the weights (src/evaluation/solution.py), on hand-built networks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.analysis.sweep import summarise
from src.evaluation.initial_state import (
    dead_input_distribution,
    has_close_pair,
    initial_model,
    initial_state_metrics,
    negative_pattern_probabilities,
    opposed_signs_probability,
)
from src.evaluation.solution import output_thresholds
from src.models.ca import ClassicalAutoencoder
from src.pipeline.training import seeded_model

LINES_2X2 = np.array([[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=float)
IMAGES = torch.tensor(LINES_2X2, dtype=torch.float32).view(4, 1, 2, 2)


def _ca() -> ClassicalAutoencoder:
    return ClassicalAutoencoder({"_target_": "src.models.nets.DenseNet", "hidden_dims": [2]}, [1, 2, 2])


def test_one_input_is_negative_in_a_neuron_half_the_time() -> None:
    assert negative_pattern_probabilities(np.array([[1.0, 1.0, 0.0, 0.0]])) == pytest.approx(
        {(False,): 0.5, (True,): 0.5}
    )


@pytest.mark.parametrize("width", [1, 2, 3])
def test_inputs_on_disjoint_pixels_die_independently(width: int) -> None:
    """Inputs that share no pixel see independent weights: the dead count is binomial(4, 2^-width)."""
    dead = 0.5**width
    expected = {k: math.comb(4, k) * dead**k * (1 - dead) ** (4 - k) for k in range(5)}
    assert dead_input_distribution(np.eye(4), width) == pytest.approx(expected, abs=1e-12)


def test_the_2x2_images_dead_input_distribution_matches_sampling() -> None:
    exact = dead_input_distribution(LINES_2X2, 2)
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-12)
    assert exact[4] == pytest.approx(1 / 36, abs=1e-12)  # every input dead: each neuron's 1/6, squared
    weights = np.random.default_rng(0).uniform(-1, 1, (400_000, 2, 4))
    dead = (np.einsum("nkd,id->nki", weights, LINES_2X2) < 0).all(1).sum(1)
    sampled = np.bincount(dead, minlength=5) / len(dead)
    assert sampled == pytest.approx([exact[k] for k in range(5)], abs=0.003)


def test_opposed_signs_probability() -> None:
    assert opposed_signs_probability(2, 2) == 1 / 8
    assert opposed_signs_probability(1, 1) == 1 / 2


def test_initial_model_is_the_one_training_starts_from(make_config) -> None:
    cfg = make_config("data=lines2x2", "seed=7")
    state = torch.get_rng_state()
    rebuilt = initial_model(cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was
    trained_from = seeded_model(cfg)
    for (name, value), other in zip(
        rebuilt.state_dict().items(), trained_from.state_dict().values(), strict=True
    ):
        assert torch.equal(value, other), name


def test_initial_state_of_a_hand_built_network() -> None:
    """L1 weights that kill 0011 and 1010 (negative in both units), L2 all negative, L3 all
    positive: the decoder is dead for every input, as footnote 7 says."""
    initial, trained = _ca(), _ca()
    with torch.no_grad():
        for model in (initial, trained):
            model.net.encoder[1].weight.copy_(torch.tensor([[1.0, 2.0, -1.0, -1.0], [1.0, 2.0, -1.0, -1.0]]))
        initial.bottleneck.weight.copy_(torch.tensor([[-1.0, -0.5]]))
        initial.net.decoder[0].weight.copy_(torch.tensor([[1.0], [2.0]]))
        # The trained net's L1 revives 0011 (weights on its pixels 3 and 4 made positive).
        trained.net.encoder[1].weight[0, 3] = 5.0
    metrics = initial_state_metrics(initial, trained, IMAGES)
    assert metrics == {
        "init/dead_inputs": 2,
        "init/dead_inputs_class": "2",
        "init/inputs_with_a_negative_unit": 2,
        "init/l2_l3_signs": "L2 all -, L3 all +",
        "init/decoder_dead": "yes",
        "init/identical_layer": "encoder.2 ReLU",
        "test/dead_inputs": 1,
        "test/revived_inputs": 1,
    }


def test_thresholds_of_a_hand_set_optimal_network() -> None:
    """L3 = (relu(z), relu(-z)); output 1's logit is -2 relu(z) - 4 relu(-z) + 3, which crosses
    zero at z = -0.75 and z = 1.5 (the report's output-1 shape: 0, 1, 0); output 2's is 10 z."""
    model = _ca()
    with torch.no_grad():
        model.net.decoder[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.net.decoder[0].bias.zero_()
        model.net.decoder[2].weight.copy_(
            torch.tensor([[-2.0, -4.0], [10.0, -10.0], [-10.0, 10.0], [2.0, 4.0]])
        )
        model.net.decoder[2].bias.copy_(torch.tensor([3.0, 0.0, 0.0, -3.0]))
    tables = output_thresholds(model)
    assert tables[0][0] == pytest.approx([-0.75, 1.5]) and tables[0][1] == [0, 1, 0]
    assert tables[1] == ([0.0], [0, 1])
    assert tables[2] == ([0.0], [1, 0])
    assert tables[3][0] == pytest.approx([-0.75, 1.5]) and tables[3][1] == [1, 0, 1]


def test_summary_cross_tabulates_initial_state_with_outcomes() -> None:
    rows = [("2", "one_merged_pair"), ("2", "one_merged_pair"), ("0", "optimal"), ("2", "all_gray")]
    jobs = [
        {
            "dir": str(i),
            "overrides": [f"seed={i}"],
            "error": None,
            "metrics": {"init/dead_inputs_class": dead, "test/outcome": outcome},
        }
        for i, (dead, outcome) in enumerate(rows)
    ]
    table = summarise(jobs)["crosstabs"]["init/dead_inputs_class x test/outcome"]
    assert table["2"] == {
        "all_gray": 1,
        "optimal": 0,
        "one_merged_pair": 2,
        "two_merged_pairs": 0,
        "other": 0,
    }
    assert table["0"]["optimal"] == 1 and sum(table["0"].values()) == 1


@pytest.mark.parametrize("units", [1, 2, 5])
def test_close_pairs_are_found_as_pdist_finds_them(units: int) -> None:
    """has_close_pair equals pdist's smallest Chebyshev distance <= tolerance: on random rows, with
    a planted pair at, just inside and just outside the tolerance, and with ReLU-like ties."""
    generator = torch.Generator().manual_seed(units)
    tolerance = 1e-6
    for trial in range(60):
        values = torch.randn(
            int(torch.randint(2, 400, (1,), generator=generator)), units, generator=generator
        )
        if trial % 3 == 1:
            values = values.clamp(min=0)  # many rows tie at 0 in some unit
        if trial % 4 == 2:
            offset = torch.tensor([0.5e-6, 1e-6, 1.5e-6])[trial % 3]
            values[1] = values[0] + offset * torch.sign(torch.randn(units, generator=generator))
        expected = bool(torch.pdist(values.double(), p=math.inf).min() <= tolerance)
        assert has_close_pair(values, tolerance) == expected, trial
    assert not has_close_pair(torch.zeros(1, units), tolerance)
    assert has_close_pair(torch.zeros(2, units), tolerance)
    # Ties in the widest unit but every row apart in another (all pairs compared).
    tied = torch.stack([torch.arange(1000) % 2 * 10.0, torch.arange(1000) * 1e-3], 1).double()
    assert not has_close_pair(tied, tolerance)
    tied[7, 1] = tied[5, 1] + 0.5e-6
    assert has_close_pair(tied, tolerance)
    assert has_close_pair(torch.zeros(1000, units), tolerance)  # exact repeats among many ties

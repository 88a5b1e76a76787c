"""Report 000's explanation of failed runs by the state right after initialisation, measured.

The report blames a merged pair on two inputs that are negative in every L1 neuron at
initialisation ("no weight update could improve the situation", footnote 6), and all-gray outputs
on all-negative L1 weights or on L2 weights of one sign with L3 weights of the other (footnote 7).
For a dense ReLU net (L1 = the encoder's first ReLU layer, L2 = the bottleneck, L3 = the
decoder's first ReLU layer) the `initial_state` evaluation rebuilds the model exactly as training
built it (same seed, same construction) and records, over the training images:

- `init/dead_inputs`: how many images are zero in every L1 unit, and `init/dead_inputs_class`,
  the same as a category for cross-tabs: the count itself for at most `CATEGORICAL_COUNTS`
  images (the four 2x2 images), else `none`, `some` or `all`;
- `init/inputs_with_a_negative_unit`: how many are zero in at least one L1 unit;
- `init/l2_l3_signs`: with a 1-unit bottleneck, `L2 all -, L3 all +`, `L2 all +, L3 all -`
  (either silences L3 for every input when the biases are zero) or `mixed`;
- `init/decoder_dead`: `yes` when L3 is zero for every image;
- `init/identical_layer`: the first layer after which two images have identical activations;
- and, after training, `test/dead_inputs` and `test/revived_inputs` (dead at initialisation, alive
  now): whether a dead input stays dead.

`dead_input_distribution` gives the exact probabilities of the same events for zero biases and
i.i.d. symmetric uniform weights (Glorot's), from the volumes of the polytopes that the sign
patterns cut out of the weight cube.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection

from src.data.lines import LINES_2X2
from src.data.memory import InMemoryDataModule
from src.evaluation.base import EvaluationContext, EvaluationResult, MemberSet
from src.evaluation.census import IDENTICAL_TOLERANCE
from src.models.base import ReconstructionModel
from src.models.nets import DenseNet

SIGN_CONFIGS = ("L2 all -, L3 all +", "L2 all +, L3 all -", "mixed")
# Up to this many images, the dead-input count is itself the category.
CATEGORICAL_COUNTS = 16


def initial_model(cfg: DictConfig) -> ReconstructionModel:
    """The model with the initial weights its training started from: training seeds the global
    generator with `seed` and then builds the model (on the CPU), so this does the same inside a
    forked CPU random state; the caller's generators (a GPU's too) are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)
        return instantiate(cfg.model)


def applies(cfg: DictConfig) -> bool:
    """Report 000's kind of net, which these readings need: a dense net with ReLU hidden layers."""
    net = cfg.model.net
    return (
        net._target_.rsplit(".", 1)[-1] == DenseNet.__name__
        and net.get("activation", "relu") == "relu"
        and bool(net.get("hidden_dims"))
    )


def relu_of(layers: list[tuple[str, torch.Tensor]], part: str) -> torch.Tensor:
    """The activations (images, units) of the first ReLU layer of `part` (`encoder`: L1, `decoder`:
    L3) among a model's `layer_activations`."""
    return next(values for name, values in layers if name.startswith(f"{part}.") and "ReLU" in name)


def relu_layer(model: ReconstructionModel, images: torch.Tensor, part: str) -> torch.Tensor:
    """The activations of the first ReLU layer of `part` on the images as the net sees them."""
    return relu_of(model.layer_activations(images), part)


def dead_inputs(model: ReconstructionModel, images: torch.Tensor) -> torch.Tensor:
    """Which images (bool, one per image) are zero in every unit of L1."""
    return relu_layer(model, images, "encoder").abs().amax(1).eq(0)


def signs_of(into: torch.Tensor, out: torch.Tensor) -> str:
    """Footnote 7's configuration of a 1-unit bottleneck from the weights into it (L2) and out of it
    into the decoder's first layer (L3)."""
    into, out = into.flatten(), out.flatten()
    if (into < 0).all() and (out > 0).all():
        return SIGN_CONFIGS[0]
    if (into > 0).all() and (out < 0).all():
        return SIGN_CONFIGS[1]
    return SIGN_CONFIGS[2]


def sign_config(model: ReconstructionModel) -> str:
    """Footnote 7's configuration of a model's 1-unit bottleneck (`signs_of`)."""
    return signs_of(model.code_layer().weight, model.net.decoder[0].weight)


def has_close_pair(values: torch.Tensor, tolerance: float) -> bool:
    """Whether some two rows of `values` (N, units) differ by at most `tolerance` in every unit:
    the smallest Chebyshev distance of `torch.pdist(values, p=inf)` <= tolerance, without all N^2/2
    pairs. Rows that close have projections (on fixed positive weights p) within sum(p) * tolerance,
    so after sorting by projection only the rows within that window of each other need comparing;
    where windows hold many rows (ties) and no row repeats exactly, all pairs are compared."""
    values = values.double()
    count, units = values.shape
    if count < 2:
        return False
    weights = torch.rand(units, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1
    key, order = (values @ weights).sort()
    values = values[order]
    # Twice the bound: a pair at the tolerance still falls inside despite the projection's rounding.
    ends = torch.searchsorted(key, key + 2 * float(weights.sum()) * tolerance, side="right")
    partners = ends - torch.arange(1, count + 1)
    total = int(partners.sum())
    if total > 64 * count:  # many ties: exact repeats, or all pairs
        repeats = len(torch.unique(values, dim=0)) < count
        return repeats or bool(torch.pdist(values, p=math.inf).min() <= tolerance)
    first = torch.repeat_interleave(torch.arange(count), partners)
    starts = torch.cumsum(partners, 0) - partners
    second = first + 1 + torch.arange(total) - starts[first]
    return bool(((values[first] - values[second]).abs().amax(1) <= tolerance).any())


def first_identical(layers: list[tuple[str, torch.Tensor]]) -> str:
    """The first of the layers after which some two of the (distinct) images have the same
    activations (within IDENTICAL_TOLERANCE in every unit), or `none`."""
    for name, values in layers:
        if has_close_pair(values, IDENTICAL_TOLERANCE):
            return name
    return "none"


def distinct_images(images: torch.Tensor) -> torch.Tensor:
    """The images with repeats counted once (a training set of line images has them)."""
    return torch.unique(images.flatten(1), dim=0).view(-1, *images.shape[1:])


def first_identical_layer(model: ReconstructionModel, images: torch.Tensor) -> str:
    """The first layer after which some two different images have the same activations, or
    `none` (repeated images are counted once)."""
    return first_identical(model.layer_activations(distinct_images(images)))


def initial_state_readings(
    initial: list[tuple[str, torch.Tensor]],
    trained: list[tuple[str, torch.Tensor]],
    initial_on_distinct: list[tuple[str, torch.Tensor]],
    signs: str | None,
) -> dict[str, str | int]:
    """The metrics of the module docstring from the initial and the trained model's layer
    activations on the images, the initial model's on the distinct images, and (for a 1-unit
    bottleneck) its sign configuration."""
    l1 = relu_of(initial, "encoder")
    dead_at_start = l1.abs().amax(1).eq(0)
    dead_at_end = relu_of(trained, "encoder").abs().amax(1).eq(0)
    dead, count = int(dead_at_start.sum()), len(l1)
    if count <= CATEGORICAL_COUNTS:
        dead_class = str(dead)
    else:
        dead_class = "none" if dead == 0 else "all" if dead == count else "some"
    metrics: dict[str, str | int] = {
        "init/dead_inputs": dead,
        "init/dead_inputs_class": dead_class,
        "init/inputs_with_a_negative_unit": int(l1.eq(0).any(1).sum()),
        "init/decoder_dead": "yes" if relu_of(initial, "decoder").abs().max() == 0 else "no",
        "init/identical_layer": first_identical(initial_on_distinct),
        "test/dead_inputs": int(dead_at_end.sum()),
        "test/revived_inputs": int((dead_at_start & ~dead_at_end).sum()),
    }
    if signs is not None:
        metrics["init/l2_l3_signs"] = signs
    return metrics


@torch.no_grad()
def initial_state_metrics(
    initial: ReconstructionModel, trained: ReconstructionModel, images: torch.Tensor
) -> dict[str, str | int]:
    """The metrics of the module docstring for the initial and the trained model on `images`."""
    initial = initial.to(images.device).eval()
    return initial_state_readings(
        initial.layer_activations(images),
        trained.layer_activations(images),
        initial.layer_activations(distinct_images(images)),
        sign_config(initial) if initial.hparams.latent_dim == 1 else None,
    )


def _named(names: list[str], layers: list[torch.Tensor], index: int) -> list[tuple[str, torch.Tensor]]:
    return [(name, values[index]) for name, values in zip(names, layers, strict=True)]


class InitialState:
    """The `initial_state` evaluation on the first `max_images` training images (see the module
    docstring). It reports nothing for an unseeded run (no initial model to rebuild) or a net that
    is not a dense ReLU net."""

    def __init__(self, max_images: int = 1000) -> None:
        self.max_images = max_images

    def __call__(
        self, model: ReconstructionModel, datamodule: InMemoryDataModule, context: EvaluationContext
    ) -> EvaluationResult:
        if context.config.seed is None or not applies(context.config):
            return EvaluationResult()
        images = datamodule.images("train")[: self.max_images].to(model.device)
        return EvaluationResult(initial_state_metrics(initial_model(context.config), model, images))

    @torch.no_grad()
    def evaluate_members(
        self, members: MemberSet, datamodule: InMemoryDataModule, contexts: list[EvaluationContext]
    ) -> list[EvaluationResult]:
        """Every member's readings at once, from the initial weights its training started from."""
        config = contexts[0].config
        if members.initial is None or config.seed is None or not applies(config):
            return [self(members.model(index), datamodule, context) for index, context in enumerate(contexts)]
        initial, final = members.initial, members.final
        images = datamodule.images("train")[: self.max_images].to(final.device)
        template = final.template
        names = template.layer_names()
        at_start = initial.call(ReconstructionModel.layer_outputs, images)
        at_end = final.call(ReconstructionModel.layer_outputs, images)
        on_distinct = initial.call(ReconstructionModel.layer_outputs, distinct_images(images))
        code = next(name for name, module in template.named_modules() if module is template.code_layer())
        into, out = initial.parameters[f"{code}.weight"], initial.parameters["net.decoder.0.weight"]
        return [
            EvaluationResult(
                initial_state_readings(
                    _named(names, at_start, index),
                    _named(names, at_end, index),
                    _named(names, on_distinct, index),
                    signs_of(into[index], out[index]) if template.hparams.latent_dim == 1 else None,
                )
            )
            for index in range(len(contexts))
        ]


# --- exact probabilities -----------------------------------------------------------------------


def _polytope_volume(halfspaces: np.ndarray) -> float:
    """The volume of {w : A w + b <= 0} for rows [A, b] (bounded), 0 if it has no interior."""
    dim = halfspaces.shape[1] - 1
    norms = np.linalg.norm(halfspaces[:, :-1], axis=1, keepdims=True)
    # The Chebyshev centre: the interior point farthest from every face (and whether one exists).
    found = linprog(
        np.r_[np.zeros(dim), -1.0],
        A_ub=np.hstack([halfspaces[:, :-1], norms]),
        b_ub=-halfspaces[:, -1],
        bounds=[(None, None)] * dim + [(0, None)],
    )
    if not found.success or found.x[-1] < 1e-9:
        return 0.0
    vertices = HalfspaceIntersection(halfspaces, found.x[:-1]).intersections
    return float(ConvexHull(vertices).volume)


def negative_pattern_probabilities(inputs: np.ndarray) -> dict[tuple[bool, ...], float]:
    """For one neuron with zero bias and i.i.d. Uniform(-1, 1) weights: the probability of each
    pattern of negative pre-activations over the inputs (rows of `inputs`), exactly (any symmetric
    uniform scale gives the same). Patterns of probability zero are left out."""
    count, dim = inputs.shape
    # The cube [-1, 1]^dim as faces [A, b] with A w + b <= 0.
    cube = np.hstack([np.vstack([np.eye(dim), -np.eye(dim)]), -np.ones((2 * dim, 1))])
    probabilities = {}
    for pattern in itertools.product((False, True), repeat=count):
        # negative: x.w <= 0; otherwise -x.w <= 0.
        signs = np.where(pattern, 1.0, -1.0)[:, None]
        faces = np.hstack([signs * inputs, np.zeros((count, 1))])
        volume = _polytope_volume(np.vstack([cube, faces]))
        if volume > 0:
            probabilities[pattern] = volume / 2**dim
    return probabilities


def dead_input_distribution(inputs: np.ndarray, width: int) -> dict[int, float]:
    """P(exactly k of the inputs are negative in all `width` L1 neurons), k = 0..len(inputs), for
    zero biases and i.i.d. symmetric uniform weights: the neurons are independent, so
    P(every input in S dead) = q(S)^width with q(S) one neuron's P(negative on all of S), and
    inclusion-exclusion gives the exact sets."""
    patterns = negative_pattern_probabilities(np.asarray(inputs, dtype=float))
    count = len(inputs)
    subsets = list(itertools.product((False, True), repeat=count))

    def all_negative(subset: tuple[bool, ...]) -> float:
        return sum(
            p for pattern, p in patterns.items() if all(a for a, s in zip(pattern, subset, strict=True) if s)
        )

    at_least = {subset: all_negative(subset) ** width for subset in subsets}
    distribution = dict.fromkeys(range(count + 1), 0.0)
    for subset in subsets:
        exact = sum(
            (-1) ** (sum(superset) - sum(subset)) * at_least[superset]
            for superset in subsets
            if all(sup or not s for sup, s in zip(superset, subset, strict=True))
        )
        distribution[sum(subset)] += exact
    return distribution


def opposed_signs_probability(l1_width: int, l3_width: int) -> float:
    """Footnote 7's event, exactly, for a 1-unit bottleneck with i.i.d. symmetric weights: all
    `l1_width` weights into it of one sign and all `l3_width` weights out of it of the other."""
    return 2 * 0.5**l1_width * 0.5**l3_width


def negative_in_some_unit_probability(width: int) -> float:
    """Footnote 6's first number: an input with zero biases and symmetric weights is negative in
    each of `width` L1 neurons with probability 1/2, independently, so in some neuron with
    1 - 2^-width."""
    return 1 - 0.5**width


def lines2x2_dead_inputs_probability(width: int, at_least: int) -> float:
    """P(at least `at_least` of the four 2x2 images are dead in all `width` L1 neurons), exactly."""
    images = np.array([[float(c) for c in code] for code in LINES_2X2])
    distribution = dead_input_distribution(images, width)
    return sum(p for count, p in distribution.items() if count >= at_least)

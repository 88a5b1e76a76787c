"""The pieces of the one finishing path: members evaluated at once equal each model evaluated on its
own, the test stage's weighted means and batch limits, the history's thinning, the typed OOD
settings, and the member configs that switch one config's seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from src.errors import ConfigValueError
from src.evaluation.census import CensusOutcome, outcome_metrics
from src.evaluation.initial_state import InitialState, initial_state_metrics
from src.evaluation.scorer import OODSettings
from src.models.base import ReconstructionModel
from src.models.ca import ClassicalAutoencoder
from src.models.members import MemberModels
from src.models.vae import VariationalAutoencoder
from src.pipeline.callbacks import history_stride, keeps_epoch
from src.pipeline.config import MemberConfigs, compose_config
from src.pipeline.finishing import batch_limit, stage_means

NET = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [2]}
IMAGES = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.float32).view(
    4, 1, 2, 2
)


def _members(model_class: type[ReconstructionModel], count: int = 5) -> list[ReconstructionModel]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(model_class(NET, [1, 2, 2], latent_dim=1).eval())
    return models


@pytest.mark.parametrize("model_class", [ClassicalAutoencoder, VariationalAutoencoder])
def test_members_called_at_once_give_each_models_own_values(model_class: type[ReconstructionModel]) -> None:
    models = _members(model_class)
    members = MemberModels.stack(models)
    noise = torch.randn(len(models), 4, 1) if model_class is VariationalAutoencoder else None
    together = members.call(
        ReconstructionModel.evaluation_metrics, IMAGES, noise, batched=[False, noise is not None]
    )
    layers = members.call(ReconstructionModel.layer_outputs, IMAGES)
    for index, model in enumerate(models):
        with torch.no_grad():
            alone = model.evaluation_metrics(IMAGES, None if noise is None else noise[index])
            for name, value in alone.items():
                torch.testing.assert_close(together[name][index], value, rtol=1e-6, atol=1e-7)
            for stacked, single in zip(layers, model.layer_outputs(IMAGES), strict=True):
                torch.testing.assert_close(stacked[index], single, rtol=1e-6, atol=1e-7)
        # A member's state dict is its own copy, the model's weights.
        state = members.state_dict(index)
        assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
        assert all(value.untyped_storage().nbytes() == value.nbytes for value in state.values())
    code = "bottleneck.weight" if model_class is ClassicalAutoencoder else "mu.weight"
    chosen = members.select([3, 1])
    assert torch.equal(chosen.parameters[code][0], models[3].code_layer().weight)


def test_batched_census_and_initial_state_equal_the_one_model_readings(tmp_path: Path) -> None:
    from src.data.lines import Lines2x2DataModule
    from src.evaluation.base import EvaluationContext, MemberSet

    initial = _members(ClassicalAutoencoder)
    trained = _members(ClassicalAutoencoder)
    with torch.no_grad():  # some "training": other weights than the initial ones
        for model in trained:
            for parameter in model.parameters():
                parameter.mul_(-1.5)
    datamodule = Lines2x2DataModule()
    datamodule.setup()
    cfg = compose_config(["data=lines2x2"], tmp_path)
    contexts = [EvaluationContext(tmp_path, False, cfg) for _ in trained]
    members = MemberSet(
        MemberModels.stack(trained), MemberModels.stack(initial), lambda index: trained[index]
    )
    census = CensusOutcome().evaluate_members(members, datamodule, contexts)
    state = InitialState().evaluate_members(members, datamodule, contexts)
    outcomes = set()
    for index, model in enumerate(trained):
        assert census[index].metrics == outcome_metrics(model, datamodule.images("test"))
        assert state[index].metrics == initial_state_metrics(
            initial[index], model, datamodule.images("train")
        )
        outcomes.add(census[index].metrics["test/outcome"])
    assert len(outcomes) >= 2  # different members, different readings: not one member copied


def test_stage_means_weigh_batches_by_their_size_and_limits_follow_lightning() -> None:
    images = torch.arange(10, dtype=torch.float32).view(10, 1)
    means = stage_means(lambda batch: {"mean": batch.mean()}, images, batch_size=4, batches=3)
    assert means["mean"].item() == pytest.approx(4.5)  # batches of 4, 4, 2: the mean of all ten
    assert stage_means(lambda batch: {"mean": batch.mean()}, images, 4, 1)["mean"].item() == pytest.approx(
        1.5
    )
    assert batch_limit(None, 7) == 7 and batch_limit(1.0, 7) == 7 and batch_limit(2, 7) == 2
    assert batch_limit(0.5, 7) == 3 and batch_limit(0.01, 7) == 1 and batch_limit(0.0, 7) == 0
    assert batch_limit(100, 7) == 7


def test_a_long_history_keeps_every_kth_validated_and_last_epoch() -> None:
    assert history_stride(5000, 100) == 50 and history_stride(80, 100) == 1
    assert history_stride(5000, None) == 1 and history_stride(-1, 100) == 1
    kept = [epoch for epoch in range(5000) if keeps_epoch(epoch, 50, 5000, 500)]
    assert kept[:3] == [0, 50, 100] and kept[-1] == 4999 and 499 in kept and 999 in kept
    assert len(kept) == 100 + 10  # every 50th, and the ten validated epochs (the last among them)
    assert [epoch for epoch in range(5) if keeps_epoch(epoch, 1, 5, 1)] == list(range(5))


def test_ood_settings_are_typed_and_each_bad_value_is_named() -> None:
    settings = OODSettings.of({"sets": ["hflip"], "samples": 4, "neighbours": {"k": 3}, "max_images": 50})
    assert settings.sets == ("hflip",) and settings.samples == 4 and settings.neighbours.k == 3
    assert settings.neighbours.reference_images == 20000 and settings.threshold.method == "percentile"
    for bad, key in [
        ({"samples": -1}, "ood.samples"),
        ({"samples": 1.5}, "ood.samples"),
        ({"max_images": 0}, "ood.max_images"),
        ({"neighbours": {"k": 5, "reference_images": 5}}, "ood.neighbours.reference_images"),
        ({"sets": ["rotate"]}, "ood.sets"),
        ({"sampels": 4}, "unknown key"),
        ({"threshold": {"method": "median"}}, "threshold"),
    ]:
        with pytest.raises(ConfigValueError, match=key):
            OODSettings.of(bad)
    with pytest.raises(ConfigValueError, match="ood.score='neg_elbo' is not a score"):
        OODSettings.of({"score": "neg_elbo"}).check(ClassicalAutoencoder.anomaly_scores, "lines")
    with pytest.raises(ConfigValueError, match="needs latent samples"):
        OODSettings.of({"score": "neg_elbo_iw"}).check(VariationalAutoencoder.anomaly_scores, "lines")


def test_member_configs_switch_one_config_and_resolve_like_a_full_resolution(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.batched_launcher.batched_launcher import BatchedLauncher

    # A key that interpolates the seed through another key, a text filled in from a key resolved
    # before it and from the folder, one through a resolver, and a W&B name from a resolver.
    overrides = [
        "experiment=census_ca_2x2",
        "+extra.twice=${data.shuffle_seed}",
        "+extra.constant=${data.name}",
        "+extra.label=run_${extra.twice}_of_${paths.run_dir}",
        "+extra.resolved=${oc.env:HOME}_${seed}",
    ]
    template = compose_config(overrides, tmp_path)
    configs = MemberConfigs(BatchedLauncher._task_config(template, None), [3, 11, 5])
    assert len(configs) == 3 and [cfg.seed for cfg in configs] == [3, 11, 5]
    assert "extra.twice" in configs._job_dependent and "extra.constant" not in configs._job_dependent
    for index, seed in enumerate([3, 11, 5]):
        with_seed = BatchedLauncher._task_config(template, seed)
        with_seed.paths.run_dir = configs[index].paths.run_dir = str(tmp_path / f"job{seed}")
        expected = OmegaConf.to_container(with_seed, resolve=True)
        assert configs.resolved(index) == expected
        assert configs.resolved(index)["extra"]["twice"] == seed
        unresolved = yaml.safe_load(configs.unresolved_yaml(index))
        assert unresolved == OmegaConf.to_container(with_seed, resolve=False) | {"paths": unresolved["paths"]}


def test_line_evaluations_of_members_at_once_equal_each_models_own(tmp_path: Path) -> None:
    """The line outcomes and the OOD evaluation (sets built once, the deterministic pass vmapped over
    the members) give each member what its model gives alone."""
    from src.evaluation.base import EvaluationContext, MemberSet
    from src.evaluation.line_outcomes import LineOutcomes
    from src.evaluation.ood import OODDetection
    from src.pipeline.config import build

    cfg = compose_config(["data=lines", "data.n_train=64", "data.n_val=40", "data.n_test=40"], tmp_path)
    datamodule = build(cfg.data)
    datamodule.setup()
    net = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [8]}
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(ClassicalAutoencoder(net, [1, 32, 32], latent_dim=2).eval())
    members = MemberSet(MemberModels.stack(models), None, lambda index: models[index])
    folders = [tmp_path / f"together{index}" for index in range(3)]
    alone_folders = [tmp_path / f"alone{index}" for index in range(3)]
    for folder in folders + alone_folders:
        folder.mkdir()
    contexts = [EvaluationContext(folder, False, cfg) for folder in folders]
    evaluations = [LineOutcomes(angles=90, reference_angles=360, sets=["noise", "circle"]), OODDetection()]
    for evaluation in evaluations:
        together = evaluation.evaluate_members(members, datamodule, contexts)
        for index, model in enumerate(models):
            alone = evaluation(model, datamodule, EvaluationContext(alone_folders[index], False, cfg)).metrics
            assert together[index].metrics.keys() == alone.keys() and len(alone) > 5
            for key, value in alone.items():
                if isinstance(value, float) and "time" not in key:
                    assert together[index].metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
                elif "time" not in key:
                    assert together[index].metrics[key] == value, key
        assert together[0].metrics != together[1].metrics  # each member its own, not one copied
    assert (folders[1] / "scores.csv").read_text().splitlines()[0] == (
        alone_folders[1] / "scores.csv"
    ).read_text().splitlines()[0]


def test_members_called_in_batches_equal_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images split into batches small enough for the memory bound give the one call's outputs."""
    from src.models import members as members_module

    members = MemberModels.stack(_members(VariationalAutoencoder, count=3))
    images = torch.rand(11, 1, 2, 2)
    whole = members.call(ReconstructionModel.scores, images)
    per_image = members.values_per_image(ReconstructionModel.scores, images[0])
    monkeypatch.setattr(members_module, "MEMBER_BATCH_VALUES", 3 * per_image * 3)  # 3 images a batch
    batched = members.call_batched(ReconstructionModel.scores, images, batch_size=5)
    assert batched.keys() == whole.keys()
    for name, value in whole.items():
        assert batched[name].shape == value.shape == (3, 11)
        torch.testing.assert_close(batched[name], value, rtol=1e-6, atol=1e-7)
    logits = members.call_batched(lambda model, batch: model.encode_pass(batch).logits, images, batch_size=2)
    assert logits.shape[:2] == (3, 11)


def test_values_per_image_count_the_pixels_and_every_layer_output_of_the_methods_pass() -> None:
    """The memory bound of a members' call counts what the pass computes, not only the pixels: the
    VAE's encoder (4 pixels, Flatten 4, Linear 2, ReLU 2, mu 1, logvar 1) and for its scores the
    decoder too (Linear 2, ReLU 2, Linear 4, Unflatten 4)."""
    members = MemberModels.stack(_members(VariationalAutoencoder, count=3))
    assert members.values_per_image(ReconstructionModel.latent_statistics, IMAGES[0]) == 14
    assert members.values_per_image(ReconstructionModel.scores, IMAGES[0]) == 26


def test_a_statistic_over_the_set_called_a_few_members_at_a_time_equals_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`call_grouped` (a method that reads the whole set, such as the latent statistics) splits the
    members, never the images, and joins the outputs in the members' order."""
    from src.models import members as members_module

    members = MemberModels.stack(_members(VariationalAutoencoder, count=5))
    images = torch.rand(9, 1, 2, 2)
    whole = members.call(ReconstructionModel.latent_statistics, images)
    per_member = len(images) * members.values_per_image(ReconstructionModel.latent_statistics, images[0])
    monkeypatch.setattr(members_module, "MEMBER_BATCH_VALUES", 2 * per_member)  # 2 members a call
    called = []
    call = MemberModels.call

    def counted(self: MemberModels, method, *args):  # noqa: ANN001, ANN202 - the method's own signature
        called.append((self.count, len(args[0])))
        return call(self, method, *args)

    monkeypatch.setattr(MemberModels, "call", counted)
    grouped = members.call_grouped(ReconstructionModel.latent_statistics, images)
    assert called == [(2, 9), (2, 9), (1, 9)]
    assert grouped.keys() == whole.keys()
    for name, value in whole.items():
        assert grouped[name].shape == value.shape == (5,)
        torch.testing.assert_close(grouped[name], value, rtol=1e-6, atol=1e-7)

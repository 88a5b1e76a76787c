"""The one Lightning module, which trains any model of src/models (a plain `nn.Module`): its
training, validation and test steps, the NaN checks, the optimisers and the lean training log. A
model of one part minimises its `training_loss` (Lightning's automatic optimisation); a model of
several parts (the VAE-GAN: encoder, decoder, discriminator) trains each part with its own optimiser
on its own objective (`part_objectives`), stepping the parts it says (`part_updates`), through
Lightning's manual optimisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from src.models.base import ReconstructionModel
from src.models.training_log import TrainingTermsLog


class AutoencoderModule(TrainingTermsLog):
    """Trains `model`; its checkpoints hold the model's weights under `model.` and its settings as
    the hyper-parameters (src/pipeline/checkpoints.py loads either layout)."""

    def __init__(self, model: ReconstructionModel) -> None:
        super().__init__()
        self.model = model
        # The run's config, which holds these, is what the loggers are given (src/pipeline/loggers.py).
        self.save_hyperparameters(dict(model.hparams), logger=False)
        self.automatic_optimization = len(model.parts()) == 1

    # --- training --------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor | None:
        images = batch[0]
        if not self.automatic_optimization:
            self._train_parts(images, batch_idx)
            return None
        loss, terms = self.model.training_loss(images, step=self.global_step)
        if self.should_check_loss(batch_idx) and not torch.isfinite(loss):
            raise FloatingPointError(
                f"The training loss of {type(self.model).__name__} became {loss.item()} at step "
                f"{self.global_step} (terms: { {k: float(v) for k, v in terms.items()} }). Lower "
                "model.optimizer.lr, or use model.reconstruction=bce; the checkpoints already in the run "
                "folder are kept."
            )
        self.log_training_terms({"loss": loss, **terms}, len(images), batch_idx)
        return loss

    def _train_parts(self, images: torch.Tensor, batch_idx: int) -> None:
        """One step of a model of several parts: every part's objective from one forward pass, each
        back-propagated into its own part only, then the parts the model says stepped."""
        loss, terms = self.model.training_loss(images, step=self.global_step)
        terms = {"loss": loss, **terms}
        if problem := self.model.divergence(terms):
            self._stop(problem)
        updates = self.model.part_updates(terms)
        parts = self.model.parts()
        optimizers = dict(zip(parts, self.optimizers(), strict=True))
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        objectives = self.model.part_objectives(terms)
        for index, (part, objective) in enumerate(objectives.items()):
            self.manual_backward(objective, inputs=parts[part], retain_graph=index < len(objectives) - 1)
        for part, params in parts.items():
            if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params):
                self._stop(f"the {part}'s gradient (NaN or infinite)")
        # All gradients come from the same weights: step only after every backward pass.
        for part, optimizer in optimizers.items():
            if updates[part]:
                optimizer.step()
        flags = {f"{part}_updated": float(updated) for part, updated in updates.items()}
        self.log_training_terms({**terms, **flags}, len(images), batch_idx)

    def _stop(self, what: str) -> None:
        """Save the current (last good: every step so far was finite) weights and stop the run."""
        callback = self.trainer.checkpoint_callback
        folder = Path(callback.dirpath if callback and callback.dirpath else self.trainer.default_root_dir)
        path = folder / "last_good.ckpt"
        self.trainer.save_checkpoint(path)
        raise FloatingPointError(
            f"The {type(self.model).__name__} diverged at step {self.global_step} (epoch "
            f"{self.current_epoch}): {what}. Training stopped before applying this step; the last good "
            f"weights are in {path} (earlier checkpoints there are kept). Try a lower model.optimizer.lr, "
            "model.equilibrium=0.68, or a smaller model.gamma."
        )

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        """One optimiser per part of the model (`optimizer_settings`)."""
        optimizers = [
            instantiate(self.model.optimizer_settings(part), params=params)
            for part, params in self.model.parts().items()
        ]
        return optimizers[0] if len(optimizers) == 1 else optimizers

    # --- validation (the test stage is src/pipeline/finishing.py's, without a Trainer) -----------
    def _log_evaluation(self, stage: str, images: torch.Tensor) -> None:
        """Validation terms through Lightning's epoch means."""
        for name, value in self.model.evaluation_metrics(images).items():
            self.log(
                f"{stage}/{name}",
                value,
                on_epoch=True,
                batch_size=len(images),
                prog_bar=name == "loss",
                sync_dist=True,
            )

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._log_evaluation("val", batch[0])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written before the models were plain modules holds their weights without the
        `model.` prefix: resumed all the same."""
        state = checkpoint["state_dict"]
        if state and not all(name.startswith("model.") for name in state):
            checkpoint["state_dict"] = {f"model.{name}": value for name, value in state.items()}

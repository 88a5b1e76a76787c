"""Many members of one architecture (one model per seed) as stacked weights, and any of the
model's own methods run for all of them at once with `torch.func.vmap` over `functional_call`.

Training (src/pipeline/batched.py) vmaps the training loss with the weights it optimises; after
training, the test stage and the evaluations call the same model methods (`evaluation_metrics`,
`reconstruct`, `layer_activations`, ...) on the members' final (or initial) weights through `call`:
one pass over the images for every member, on the device, instead of one model after another."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from src.models.base import ReconstructionModel


class _Method(nn.Module):
    """Runs `method(model, *args)`, so that functional_call can fill in a member's weights."""

    def __init__(self, model: ReconstructionModel) -> None:
        super().__init__()
        self.model = model
        self.method: Callable[..., Any] | None = None

    def forward(self, *args: Any) -> Any:
        return self.method(self.model, *args)


# Values (members x images x values per image) that one vmapped call of `call_batched` or
# `call_grouped` puts through the model: per image, its pixels and every layer's output in the
# method's pass (a conv net's are many times its pixels), so the peak memory of a call is bounded.
MEMBER_BATCH_VALUES = 2**27


class MemberModels:
    """`count` members of `template`'s architecture: their parameters and buffers stacked along a
    leading dimension, by the template's state-dict names. The template (a plain model) only gives
    the structure: its own weights are never read."""

    def __init__(
        self,
        template: ReconstructionModel,
        parameters: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
    ) -> None:
        self.template = template
        self.parameters, self.buffers = parameters, buffers
        self.count = len(next(iter(parameters.values())))
        self._wrapper = _Method(template)
        self._values_per_image: dict[tuple[Any, ...], int] = {}

    @classmethod
    def stack(cls, models: Sequence[ReconstructionModel]) -> MemberModels:
        """The members `models` (one architecture), their weights copied into stacked tensors; the
        first model is the template (functional_call replaces every weight it holds)."""
        parameters, buffers = stack_module_state(list(models))
        return cls(
            models[0],
            {name: value.detach() for name, value in parameters.items()},
            {name: value.detach() for name, value in buffers.items()},
        )

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters.values())).device

    @property
    def hparams(self) -> Any:
        return self.template.hparams

    def to(self, device: torch.device | str) -> MemberModels:
        return MemberModels(
            self.template,
            {name: value.to(device) for name, value in self.parameters.items()},
            {name: value.to(device) for name, value in self.buffers.items()},
        )

    def select(self, indices: Sequence[int]) -> MemberModels:
        """The members `indices`, in that order."""
        if list(indices) == list(range(self.count)):
            return self
        chosen = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        return MemberModels(
            self.template,
            {name: value[chosen] for name, value in self.parameters.items()},
            {name: value[chosen] for name, value in self.buffers.items()},
        )

    def vmapped(self, method: Callable[..., Any], batched: Sequence[bool]) -> Callable[..., Any]:
        """A pure function (parameters, buffers, *args) -> `method(model, *args)` for every member,
        stacked; `batched[i]` says whether args[i] has a leading member dimension (else all
        members get the same value). The model's own randomness is refused: pass noise in."""
        wrapper = self._wrapper
        # A method named through the base class (ReconstructionModel.latent_statistics) runs as the
        # members' own class overrides it, as `model.latent_statistics(...)` would.
        if getattr(ReconstructionModel, method.__name__, None) is method:
            method = getattr(type(self.template), method.__name__)

        def member(parameters: dict, buffers: dict, *args: Any) -> Any:
            wrapper.method = method
            prefixed = {f"model.{name}": value for name, value in {**parameters, **buffers}.items()}
            return functional_call(wrapper, prefixed, args)

        def members(parameters: dict, buffers: dict, *args: Any) -> Any:
            in_dims = (0, 0, *(0 if each else None for each in batched))
            return vmap(member, in_dims=in_dims, randomness="error")(parameters, buffers, *args)

        return members

    @torch.no_grad()
    def call(self, method: Callable[..., Any], *args: Any, batched: Sequence[bool] | None = None) -> Any:
        """`method(model, *args)` for every member at once, in evaluation mode, with these weights;
        args shared by all members unless `batched` says otherwise."""
        self.template.eval()
        flags = batched if batched is not None else [False] * len(args)
        return self.vmapped(method, flags)(self.parameters, self.buffers, *args)

    @torch.no_grad()
    def values_per_image(self, method: Callable[..., Any], image: torch.Tensor) -> int:
        """The values `method` puts through the model per image: the image's pixels plus every
        leaf module's output, counted once per method and image shape on one member's pass over
        two copies of `image` (a statistic over a set needs two), halved. A bound on what a pass
        holds at once, since it frees each output as it goes."""
        key = (method, tuple(image.shape))
        if key not in self._values_per_image:
            counted = [image.numel()]

            def count(module: nn.Module, inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    counted.append(output.numel())

            leaves = [module for module in self.template.modules() if next(module.children(), None) is None]
            hooks = [module.register_forward_hook(count) for module in leaves]
            try:
                self.select([0]).call(method, image.expand(2, *image.shape).to(self.device))
            finally:
                for hook in hooks:
                    hook.remove()
            self._values_per_image[key] = image.numel() + sum(counted[1:]) // 2
        return self._values_per_image[key]

    @torch.no_grad()
    def call_batched(
        self, method: Callable[..., Any], images: torch.Tensor, batch_size: int | None = None
    ) -> Any:
        """`call(method, batch)` over `images` in batches of at most `batch_size` images, and few
        enough that members x images x `values_per_image` stays under MEMBER_BATCH_VALUES; the
        outputs (a tensor, or a dict of tensors, each (members, images, ...)) joined along the
        images."""
        per_call = MEMBER_BATCH_VALUES // (self.count * self.values_per_image(method, images[0]))
        size = min(max(1, per_call), batch_size) if batch_size else max(1, per_call)
        outputs = [self.call(method, batch.to(self.device)) for batch in images.split(size)]
        return _joined(outputs, dim=1)

    @torch.no_grad()
    def call_grouped(self, method: Callable[..., Any], images: torch.Tensor) -> Any:
        """`call(method, images)` for a few members at a time, few enough that members x images x
        `values_per_image` stays under MEMBER_BATCH_VALUES: for a method that reads the whole set at
        once (a statistic over the images); the outputs joined along the members."""
        per_member = len(images) * self.values_per_image(method, images[0])
        group = max(1, MEMBER_BATCH_VALUES // per_member)
        images = images.to(self.device)
        outputs = [
            self.select(range(start, min(start + group, self.count))).call(method, images)
            for start in range(0, self.count, group)
        ]
        return _joined(outputs, dim=0)

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member `index`'s weights as its own model's state dict (on the CPU), each tensor its own
        copy (a view would carry, and torch.save would write, every member's storage)."""
        return {
            name: value[index].clone().cpu() for name, value in {**self.parameters, **self.buffers}.items()
        }


def _joined(outputs: list[Any], dim: int) -> Any:
    """Vmapped calls' outputs (each a tensor or a dict of tensors) joined along `dim`."""
    if len(outputs) == 1:
        return outputs[0]
    if isinstance(outputs[0], dict):
        return {name: torch.cat([output[name] for output in outputs], dim=dim) for name in outputs[0]}
    return torch.cat(outputs, dim=dim)

"""The method contract: what a UDA method tells the engine.

A method says which losses to compute on a source batch and a target batch. The engine owns the
loop, optimizers and schedules, mixed precision, checkpoints, distributed training and logging.

- `trainable_modules()`: `{"segmentor": ..., "discriminator": ...}`; the engine builds one
  optimizer per entry from `optim.<name>`, all-reduces its gradients under torchrun and
  checkpoints it.
- `extra_modules()`: teachers (EMA or frozen) and other networks that are checkpointed but never
  optimised.
- `training_step(batch, ctx)`: runs the forwards and calls `ctx.backward(loss)` as often as it
  needs; returns detached scalars for logging (and optionally `"visuals"`).
- `after_optimizer_step(ctx)`: EMA updates and the like.
- `setup(ctx)`: once before the first step (fresh or resumed), with the training datasets and
  collectives: prototypes computed over the target set, memory banks, EMA initialisation.
- `extra_state()` / `load_extra_state(state)`: non-module state (prototypes, banks, counters),
  checkpointed so that a resume is exact.
- `predict(images)`: the logits of the network that is evaluated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from udaseg.data.label_spaces import LabelSpace
from udaseg.errors import ConfigError


class StepContext(Protocol):
    """What the engine hands a method at each step (see engine/trainer.py)."""

    step: int  # optimizer step being computed, 0-based
    total_steps: int  # the schedule's horizon: schedule.total_steps, else train.steps
    progress: float  # step / total_steps, in [0, 1)
    wants_visuals: bool  # return images under "visuals" this step
    device: torch.device

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` (scaled for fp16 and for gradient accumulation)."""


@dataclass
class SetupContext:
    """What the engine hands `Method.setup` once before training.

    `all_reduce` sums a tensor over the ranks in place (and returns it); `all_gather` stacks
    the ranks' tensors of one shape into [world_size, ...]. Without torchrun both are cheap
    no-ops, so a method writes the same code for one process and for many.
    """

    datasets: dict[str, Any]  # "source", "target" (when the method uses it): training datasets
    resumed: bool  # True when the run continues from a checkpoint (extra_state restored)
    device: torch.device
    rank: int = 0
    world_size: int = 1
    batch_size: int = 1
    num_workers: int = 0
    seed: int = 0
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda tensor: tensor)
    all_gather: Callable[[torch.Tensor], torch.Tensor] = field(
        default=lambda tensor: tensor.unsqueeze(0)
    )


class Method:
    """Base class of every method; subclasses set `Config` and implement `training_step`."""

    Config: ClassVar[type]
    # Whether the engine loads target training batches (unlabelled) for this method.
    uses_target: ClassVar[bool] = True
    # Whether it loads labelled source batches (all but adabn, which only reads target images).
    uses_source: ClassVar[bool] = True
    # Optimizer settings (fields of config.OptimizerConfig) for trainable modules other than the
    # segmentor, used when the config has no `optim.<name>` entry: the paper's defaults, e.g.
    # {"discriminator": {"name": "adam", "lr": 1e-4, "betas": (0.9, 0.99), ...}}.
    default_optimizers: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Any, segmentor: nn.Module, label_space: LabelSpace) -> None:
        self.config = config
        self.segmentor = segmentor
        self.label_space = label_space

    # --- what the engine needs -------------------------------------------------------------

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor}

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called once per step after every optimizer stepped."""

    def setup(self, ctx: SetupContext) -> None:
        """Called once before the first step, after weights are initialised or restored."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the evaluated network.

        Args:
            images: float [B, 3, H, W], RGB in 0..255.
        Returns:
            logits [B, C, h, w] at the network's output resolution.
        """
        return self.segmentor(images)["logits"]

    def extra_state(self) -> dict[str, Any]:
        """Non-module state to checkpoint (tensors, numbers, strings): memory banks etc."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state to load")

    # --- conveniences ------------------------------------------------------------------------

    def all_modules(self) -> dict[str, nn.Module]:
        return {**self.trainable_modules(), **self.extra_modules()}

    def train(self, mode: bool = True) -> Method:
        for module in self.trainable_modules().values():
            module.train(mode)
        # Teachers stay in eval mode: they only ever produce targets.
        for module in self.extra_modules().values():
            module.eval()
        return self

    def to(self, device: torch.device, memory_format: torch.memory_format | None = None) -> Method:
        for module in self.all_modules().values():
            module.to(device)
            if memory_format is not None:
                module.to(memory_format=memory_format)
        return self


def check_non_negative(config: Any, *names: str) -> None:
    """ConfigError unless the named fields (default: every `lambda_*` field) are >= 0.

    A negative loss weight silently turns a loss into its opposite.
    """
    for name in names or [key for key in vars(config) if key.startswith("lambda_")]:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(config, name)}")


def require_pseudo_labels(ctx: SetupContext, method: str, how: str) -> None:
    """ConfigError unless the target training set reads pseudo labels (`data.target.
    pseudo_labels`); `how` says what the method uses them for and where they come from."""
    target = ctx.datasets.get("target")
    if target is not None and getattr(target.config, "pseudo_labels", None) is None:
        raise ConfigError(
            f"config key data.target.pseudo_labels: method {method} {how} and name their folder "
            "here"
        )


def new_layer_sgd(lr: float) -> dict[str, Any]:
    """Optimizer settings of layers a method adds to the segmentor (domain classifiers,
    projection heads): the DeepLab papers' SGD (momentum 0.9, weight decay 5e-4) at `lr`, with
    no extra head multiplier."""
    return {
        "name": "sgd",
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "head_lr_multiplier": 1.0,
    }


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Forward through `module` without accumulating gradients into its parameters.

    Gradients still flow through it to its input: AdaptSegNet's generator loss backpropagates
    the adversarial term through the discriminator into the segmentor, but must not update
    the discriminator.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)

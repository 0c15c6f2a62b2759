"""Optimizers per trainable module, and the learning-rate schedules of the papers."""

from __future__ import annotations

import torch
from torch import nn

from udaseg.config import OptimizerConfig, ScheduleConfig
from udaseg.errors import ConfigError


def build_optimizer(
    module: nn.Module, config: OptimizerConfig, name: str, implementation: str = "default"
) -> torch.optim.Optimizer:
    """One optimizer for `module`, with the head at `head_lr_multiplier` x lr.

    A module that defines `param_groups() -> {"backbone": [...], "head": [...]}` gets two
    groups (the DeepLabV2 papers train the classifier at 10x lr); any other module one group
    of its trainable parameters. Each group remembers its multiplier so that the schedule
    keeps the ratio while decaying. `weight_decay_multipliers` scales the decay of the groups
    it names. `implementation` ("default", "foreach" or "fused") picks torch.optim's kernels
    (train.optimizer_implementation).
    """
    if hasattr(module, "param_groups"):
        named_groups = module.param_groups()
    else:
        named_groups = {"backbone": [p for p in module.parameters() if p.requires_grad]}
    unknown = [key for key in config.weight_decay_multipliers if key not in named_groups]
    if unknown:
        raise ConfigError(
            f"optim.{name}.weight_decay_multipliers.{unknown[0]}: module {name!r} has no "
            f"parameter group {unknown[0]!r}; its groups: {', '.join(named_groups)}"
        )
    groups = []
    for group_name, parameters in named_groups.items():
        if not parameters:
            continue
        multiplier = config.head_lr_multiplier if group_name == "head" else 1.0
        decay = config.weight_decay * config.weight_decay_multipliers.get(group_name, 1.0)
        groups.append(
            {
                "params": parameters,
                "lr": config.lr * multiplier,
                "lr_multiplier": multiplier,
                "weight_decay": decay,
                "name": group_name,
            }
        )
    if not groups:
        raise ConfigError(f"optim.{name}: module {name!r} has no trainable parameters")
    kernels = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(implementation, {})
    if config.repeated_backbone_updates:
        if not hasattr(module, "param_groups"):
            raise ConfigError(
                f"optim.{name}.repeated_backbone_updates: module {name!r} has no backbone "
                "parameter group (only DeepLabV2 segmentors have the released code's quirk)"
            )
        parameter_names = {
            id(parameter): parameter_name for parameter_name, parameter in module.named_parameters()
        }
        for group in groups:
            group["repeats"] = [
                released_repeats(parameter_names[id(parameter)])
                if group["name"] == "backbone"
                else 1
                for parameter in group["params"]
            ]
        return RepeatedUpdateSGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            **kernels,
        )
    if config.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            **kernels,
        )
    if config.name == "adam":
        return torch.optim.Adam(
            groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, **kernels
        )
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, **kernels
    )


def released_repeats(name: str) -> int:
    """How often the released AdaptSegNet/ADVENT optimizer lists a backbone parameter.

    Their optim_parameters() walks each of conv1, bn1, layer1..4 with modules() and yields every
    module's recursive parameters(), so a tensor appears once per module on its path:
    "conv1.weight" once, "layer1.0.conv1.weight" 3 times (layer1, layer1.0, layer1.0.conv1),
    "layer1.0.downsample.0.weight" 4 times. udaseg's DeepLabV2 keeps the released names.
    """
    return name.count(".")


class RepeatedUpdateSGD(torch.optim.SGD):
    """SGD that applies each parameter's update `repeats` times per step, as the released
    AdaptSegNet/ADVENT code does with its repeated parameter list (`repeats` per group, one
    count per parameter).

    Each repetition is a whole SGD update with the same gradient: weight decay reads the weight
    as the previous repetition left it and the momentum buffer is updated every time, starting
    at the gradient. That is what the SGD of PyTorch 0.2-0.4, which the papers ran, did with a
    parameter listed several times (a first step moves a 3-copy weight 1 + 1.9 + 2.71 = 5.61
    gradients at momentum 0.9). Today's torch.optim.SGD differs on the first step, where each
    copy starts its own buffer, so it is not used with repeated lists.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():  # as torch.optim.SGD: a closure recomputes the loss
                loss = closure()
        everything = [group["params"] for group in self.param_groups]
        most = max((max(group["repeats"], default=1) for group in self.param_groups), default=1)
        try:
            for repetition in range(most):
                for group, parameters in zip(self.param_groups, everything, strict=True):
                    group["params"] = [
                        parameter
                        for parameter, repeats in zip(parameters, group["repeats"], strict=True)
                        if repeats > repetition
                    ]
                super().step()
        finally:
            for group, parameters in zip(self.param_groups, everything, strict=True):
                group["params"] = parameters
        return loss


def lr_factor(step: int, schedule: ScheduleConfig, train_steps: int) -> float:
    """Multiplier of the base learning rate at 0-based `step`.

    poly: (1 - step / total_steps) ** power, as AdaptSegNet's lr_poly computes it before each
    iteration; total_steps may exceed train.steps (AdaptSegNet decays over 250k and stops at
    150k). linear_decay: 1 until decay_start, then (total - step) / (total - decay_start), per
    step (CycleGAN changes its rate once per epoch; docs/methods/bdl.md). A linear warm-up from
    warmup_ratio multiplies the first warmup_steps (DAFormer).
    """
    total = schedule.total_steps or train_steps
    if schedule.name == "poly":
        factor = max(0.0, 1.0 - step / total) ** schedule.power
    elif schedule.name == "step":
        factor = schedule.gamma ** (step // schedule.step_size)
    elif schedule.name == "linear_decay":
        start = total // 2 if schedule.decay_start is None else schedule.decay_start
        if start >= total:
            raise ConfigError(
                f"schedule decay_start: must be below the total steps ({total}), got {start}"
            )
        factor = min(1.0, max(0.0, (total - step) / (total - start)))
    else:
        factor = 1.0
    if step < schedule.warmup_steps:
        ramp = step / schedule.warmup_steps
        factor *= schedule.warmup_ratio + (1.0 - schedule.warmup_ratio) * ramp
    return factor


def set_learning_rates(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's lr to base_lr x its multiplier x factor; returns the base group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_multiplier", 1.0) * factor
    return base_lr * factor

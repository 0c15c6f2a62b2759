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


def lr_factor(step: int, schedule: ScheduleConfig, train_steps: int) -> float:
    """Multiplier of the base learning rate at 0-based `step`.

    poly: (1 - step / total_steps) ** power, as AdaptSegNet's lr_poly computes it before each
    iteration; total_steps may exceed train.steps (AdaptSegNet decays over 250k and stops at
    150k). A linear warm-up from warmup_ratio multiplies the first warmup_steps (DAFormer).
    """
    total = schedule.total_steps or train_steps
    if schedule.name == "poly":
        factor = max(0.0, 1.0 - step / total) ** schedule.power
    elif schedule.name == "step":
        factor = schedule.gamma ** (step // schedule.step_size)
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

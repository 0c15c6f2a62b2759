"""Teachers: frozen copies and exponential moving averages of a student.

Self-training methods predict their targets with a second network: a frozen copy of an earlier
model (ProDA's distillation teacher) or an exponential moving average of the student (DACS,
DAFormer, ProDA's rectification, the memory-bank method). A teacher is a plain module listed in
`Method.extra_modules()`: checkpointed, kept in eval mode by `Method.train`, never optimised.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with every parameter's requires_grad off."""
    teacher = copy.deepcopy(module)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(
    teacher: nn.Module,
    student: nn.Module,
    alpha: float,
    buffers: Literal["copy", "ema", "keep"] = "copy",
) -> None:
    """teacher <- alpha x teacher + (1 - alpha) x student, parameter by parameter.

    Args:
        teacher: the moving average, updated in place; same architecture as `student`.
        student: the trained network.
        alpha: the teacher's weight in [0, 1]. DACS and DAFormer ramp it as
            min(1 - 1 / (step + 1), alpha_max) so that early teachers follow the student;
            the caller computes that.
        buffers: what happens to buffers (BN running statistics, counters): "copy" takes the
            student's (ProDA), "ema" averages floating-point ones like parameters and copies
            the others, "keep" leaves the teacher's own (DACS and DAFormer update parameters
            only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    teacher_parameters = dict(teacher.named_parameters())
    for name, parameter in student.named_parameters():
        # lerp_(end, weight) computes self + weight * (end - self) = alpha * self + (1 - alpha)
        # * end, in one kernel and without a temporary.
        teacher_parameters[name].lerp_(parameter.detach(), 1.0 - alpha)
    if buffers == "keep":
        return
    teacher_buffers = dict(teacher.named_buffers())
    for name, buffer in student.named_buffers():
        if buffers == "ema" and buffer.is_floating_point():
            teacher_buffers[name].lerp_(buffer, 1.0 - alpha)
        else:
            teacher_buffers[name].copy_(buffer)

"""CPU kernel choices that PyTorch's own heuristics get wrong for DeepLabV2 at one thread.

PyTorch runs a float32 1x1 convolution (stride 1, no dilation, batch < 16) with its THNN kernel
when it has one thread, and with oneDNN otherwise, on the grounds that THNN was faster
single-threaded. On this project's 2-core CPU oneDNN is 25-35% faster for ResNet's 1x1
convolutions (forward and backward, channels_last; bench/profile_step.py shows they are a third
of a DeepLabV2 step), so `train.channels_last` on a CPU routes them to oneDNN, the kernel
PyTorch itself uses with two or more threads.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _is_pointwise(convolution: nn.Conv2d) -> bool:
    return (
        convolution.kernel_size == (1, 1)
        and convolution.stride == (1, 1)
        and convolution.dilation == (1, 1)
        and convolution.padding in ((0, 0), "valid")
        and convolution.groups == 1
        and convolution.padding_mode == "zeros"
    )


def _onednn_forward(self: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    # Under autocast the ordinary path must run: autocast's cast rules belong to conv2d, and
    # oneDNN is picked for bf16 anyway. Off the CPU, likewise.
    if (
        images.device.type != "cpu"
        or images.dtype != torch.float32
        or self.weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
    ):
        return F.conv2d(images, self.weight, self.bias)
    return torch.mkldnn_convolution(images, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)


def route_pointwise_convolutions_to_onednn(module: nn.Module) -> int:
    """Run every 1x1 convolution of `module` through oneDNN on CPU float32 inputs.

    In place (the instances' forward), so parameters, state_dict keys and checkpoints are
    unchanged. Same operation, another kernel: results agree to float32 rounding.

    Returns:
        how many convolutions were routed.
    """
    routed = 0
    for child in module.modules():
        if isinstance(child, nn.Conv2d) and _is_pointwise(child):
            child.forward = types.MethodType(_onednn_forward, child)
            routed += 1
    return routed

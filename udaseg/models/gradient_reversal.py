"""Gradient reversal (Ganin & Lempitsky, ICML 2015) and a per-pixel domain classifier.

The gradient reversal layer (GRL) is the identity in the forward pass and multiplies the gradient
by -coefficient in the backward pass (REFERENCE §2, "DANN gradient reversal"). Placed between the
features and a domain classifier, one backward pass trains the classifier to tell the domains
apart while pushing the features, with the opposite sign, to make them indistinguishable.

DANN ramps the coefficient from 0 to its maximum as lambda_p = 2 / (1 + exp(-gamma * p)) - 1,
with gamma = 10 and p the training progress in [0, 1] (`dann_coefficient`), so that the noisy
early domain classifier does not disturb the features.

`PixelDomainClassifier` is DANN's domain-classifier MLP (1024 -> 1024 -> 1 hidden units, ReLU,
dropout 0.5) applied at every position of a feature map as 1x1 convolutions: each feature
vector of a segmentation network is classified on its own, as DANN classifies each image's
feature vector. It keeps the resolution, so it runs on feature maps of any size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GradientReversalFunction(torch.autograd.Function):
    """y = x forward; dL/dx = -coefficient * dL/dy backward."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coefficient = float(coefficient)
        # A view, not the input itself: autograd needs a new tensor to attach the backward to.
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad_output * -ctx.coefficient, None


def reverse_gradient(inputs: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """Identity on `inputs` whose backward multiplies the incoming gradient by -coefficient.

    Args:
        inputs: any tensor, e.g. features [B, F, h, w].
        coefficient: DANN's lambda_p (>= 0); 0 blocks the gradient, 1 reverses it unscaled.
    Returns:
        a tensor equal to `inputs`, of the same shape.
    """
    return GradientReversalFunction.apply(inputs, coefficient)


class GradientReversal(nn.Module):
    """`reverse_gradient` as a module; set `coefficient` before each forward (e.g. per step)."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = coefficient

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(inputs, self.coefficient)

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient}"


def dann_coefficient(progress: float, gamma: float = 10.0, maximum: float = 1.0) -> float:
    """DANN's schedule of the reversal coefficient: maximum * (2 / (1 + exp(-gamma * p)) - 1).

    Args:
        progress: p, the fraction of training done, in [0, 1].
        gamma: steepness (10 in the DANN paper).
        maximum: the value approached at p -> infinity (1 in the DANN paper).
    Returns:
        0 at p = 0, about 0.987 * maximum at p = 0.5 and 0.99991 * maximum at p = 1.
    """
    return maximum * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


class PixelDomainClassifier(nn.Module):
    """DANN's domain classifier as 1x1 convolutions: one domain logit per feature vector.

    Args:
        in_channels: channels of the feature map (2048 for DeepLabV2-ResNet101's layer4).
        hidden_channels: width of the two hidden layers (1024 in DANN).
        dropout: dropout probability after each hidden layer (0.5 in DANN).

    Shapes: [B, in_channels, h, w] -> [B, 1, h, w], raw logits (source = 0, target = 1).
    """

    def __init__(self, in_channels: int, hidden_channels: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=1)
        self.classifier = nn.Conv2d(hidden_channels, 1, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        # Element-wise dropout: every position is its own sample, as every image is in DANN.
        self.dropout = nn.Dropout(dropout)
        # PyTorch's default (fan-in scaled) init, as tllib's domain discriminator. The N(0, 0.01)
        # of the DeepLab heads shrinks the signal ~10x per layer on small features: on the toy
        # benchmark such a classifier stayed at exactly ln 2 and passed no gradient back.

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.relu(self.conv1(features)))
        hidden = self.dropout(self.relu(self.conv2(hidden)))
        return self.classifier(hidden)

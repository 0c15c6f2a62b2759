"""Heads of the pixel contrastive methods, applied to decoder feature vectors.

Alonso et al. (ICCV 2021; Shathe/SemiSeg-Contrastive `model/deeplabv2.py`, REFERENCE §3.11)
put on the 2048-d layer4 features:
- a projection head, Linear(F, 256) - BN - ReLU - Linear(256, 256), whose outputs (of the EMA
  teacher) fill the memory bank;
- a prediction head, Linear(256, 256) - BN - ReLU - Linear(256, 256), on the student's
  projections only (BYOL's asymmetry);
- per-class "selectors", Linear(256, 256) - BN - ReLU - Linear(256, 1): a learned attention score
  per feature vector (one set scoring the student's vectors, one scoring memory entries).

The heads work on pixel vectors [N, F]: `pixel_vectors` turns a feature map into them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp_head(in_channels: int, hidden_channels: int, out_channels: int) -> nn.Sequential:
    """Linear - BatchNorm1d - ReLU - Linear, on vectors [N, in_channels] -> [N, out_channels]."""
    return nn.Sequential(
        nn.Linear(in_channels, hidden_channels),
        nn.BatchNorm1d(hidden_channels),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_channels, out_channels),
    )


def pixel_vectors(features: torch.Tensor) -> torch.Tensor:
    """Feature maps [B, F, h, w] as pixel vectors [B * h * w], F] in (batch, row, column) order."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


class ClassSelectors(nn.Module):
    """One small MLP per class, D -> D -> 1, stored as stacked weights [C, ...].

    The released code has one `nn.Sequential` per class. Stacking them gives the same functions
    (each class has its own weights and its own BatchNorm statistics, computed over that class's
    vectors only), but every class's weights live in the same tensors: a step in which some class
    is absent still gives each parameter a gradient (zero for the absent class's rows), which the
    engine and the registry tests expect of every trainable parameter.
    """

    def __init__(self, num_classes: int, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.channels, self.momentum = num_classes, channels, momentum
        self.hidden_weight = nn.Parameter(torch.empty(num_classes, channels, channels))
        self.hidden_bias = nn.Parameter(torch.empty(num_classes, channels))
        self.norm_weight = nn.Parameter(torch.ones(num_classes, channels))
        self.norm_bias = nn.Parameter(torch.zeros(num_classes, channels))
        self.output_weight = nn.Parameter(torch.empty(num_classes, channels))
        self.output_bias = nn.Parameter(torch.empty(num_classes))
        self.register_buffer("running_mean", torch.zeros(num_classes, channels))
        self.register_buffer("running_var", torch.ones(num_classes, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and
        # bias, as the released per-class nn.Linear layers get.
        bound = 1.0 / math.sqrt(self.channels)
        for parameter in (
            self.hidden_weight,
            self.hidden_bias,
            self.output_weight,
            self.output_bias,
        ):
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, vectors: torch.Tensor, class_index: int) -> torch.Tensor:
        """Raw scores (before the sigmoid) of class `class_index`'s selector.

        Args:
            vectors: [N, D]; in training mode N must exceed 1 (batch statistics).
            class_index: which class's MLP.
        Returns:
            [N] scores.
        """
        hidden = vectors @ self.hidden_weight[class_index].t() + self.hidden_bias[class_index]
        # The running statistics are views of one class's rows: batch_norm updates them in place.
        hidden = F.batch_norm(
            hidden,
            self.running_mean[class_index],
            self.running_var[class_index],
            self.norm_weight[class_index],
            self.norm_bias[class_index],
            training=self.training,
            momentum=self.momentum,
        )
        return F.relu(hidden) @ self.output_weight[class_index] + self.output_bias[class_index]


class ContrastiveHeads(nn.Module):
    """Projection, prediction and per-class selector heads of the memory-bank method.

    Args:
        in_channels: F, the segmentor's `feature_channels`.
        num_classes: C.
        channels: the projection width (256 in the released code).
        memory_selectors: build the selectors that score memory entries (unused when the memory
            weights are uniform, the released code's effective behaviour).
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, memory_selectors: bool = True
    ) -> None:
        super().__init__()
        self.projection = mlp_head(in_channels, channels, channels)
        self.prediction = mlp_head(channels, channels, channels)
        self.feature_selectors = ClassSelectors(num_classes, channels)
        self.memory_selectors = ClassSelectors(num_classes, channels) if memory_selectors else None

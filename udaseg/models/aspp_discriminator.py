"""The ASPP output-space discriminator of Structure Enhancement (Lv et al., ECCV-W 2018).

The paper (004, section 4.2): "The discriminative network D contains 3 layer, including a ASPP
layer with 4 dilated convolutional operators in parallel, and a convolutional layer followed
sigmoid activations. The sampling rates in the ASPP layer are respectively set to 1, 2, 3 and
4", after FCAN (the paper's [17]); D is fully convolutional and "discriminates the domain label
of each spatial unit". Here:
- the ASPP layer: four 3x3 convs C -> base_channels at rates 1, 2, 3, 4, stride 1,
  padding = rate (the map keeps its size: one decision per pixel);
- where the text is silent (no code is public, REFERENCE §2), this module chooses: a
  LeakyReLU(0.2) after each branch, as in the FC discriminator of AdaptSegNet/ADVENT; the
  branches **concatenated** (4 x base_channels), not summed as DeepLabV2's classifier sums its
  ASPP outputs, so the last conv can weigh the context sizes per channel; the last conv 1x1,
  4 x base_channels -> 1;
- the sigmoid: `forward` returns the logit z and the losses apply binary cross-entropy with
  logits, which equals BCE after the sigmoid but stays finite when D is confident.

Eq. (2) of the paper writes D_ij as the probability that the map came from the **source**
(D maximises log D(source) + log(1 - D(target)), each averaged over D's H x W outputs). The
library's adversarial losses label source 0 and target 1 (AdaptSegNet's convention,
losses/adversarial.py), so sigmoid(z) is the probability of *target* and the paper's D_ij is
sigmoid(-z) (`source_probability`): the same discriminator with the sign of its last layer
flipped, and the same losses.

Shapes: [B, C, H, W] -> [B, 1, H, W] logits (source = 0, target = 1).
"""

from __future__ import annotations

import torch
from torch import nn


class ASPPDiscriminator(nn.Module):
    """Atrous-spatial-pyramid discriminator, one logit per pixel.

    Args:
        in_channels: channels of the input map (num_classes for softmax maps).
        base_channels: output channels of each dilated branch.
        dilations: the rates of the parallel 3x3 convs (the paper's 1, 2, 3, 4).
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        dilations: tuple[int, ...] = (1, 2, 3, 4),
    ) -> None:
        super().__init__()
        if not dilations or any(rate < 1 for rate in dilations):
            raise ValueError(f"dilations must be positive, got {list(dilations)}")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, base_channels, kernel_size=3, padding=rate, dilation=rate)
            for rate in dilations
        )
        self.classifier = nn.Conv2d(base_channels * len(dilations), 1, kernel_size=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.leaky_relu(branch(x)) for branch in self.branches]
        return self.classifier(torch.cat(branches, dim=1))

    def source_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's D_ij of eq. (2): probability that each pixel's map is from the source.

        x: [B, C, H, W] -> [B, 1, H, W] in (0, 1), sigmoid(-logit).
        """
        return torch.sigmoid(-self(x))

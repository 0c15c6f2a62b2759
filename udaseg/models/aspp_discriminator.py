"""The ASPP output-space discriminator of Structure Enhancement (Lv et al., ECCV-W 2018).

The paper describes it as four 3x3 convolutions with dilation rates 1, 2, 3 and 4 applied in
parallel to the segmentation softmax, followed by a convolution and a sigmoid. No code is public
(REFERENCE §2); where the text is silent this module chooses:
- each branch maps C -> base_channels, stride 1, padding = dilation (the map keeps its size),
  followed by LeakyReLU(0.2) as in the FC discriminator of AdaptSegNet/ADVENT;
- the branches are **concatenated** (4 x base_channels), not summed as DeepLabV2's classifier
  sums its ASPP outputs, so the last conv can weigh the context sizes per channel;
- the last conv is 1x1, 4 x base_channels -> 1: one decision per pixel;
- **no sigmoid**: the module returns logits and `losses.adversarial.domain_loss` applies
  binary cross-entropy with logits, which equals BCE after a sigmoid but stays finite when the
  discriminator is confident.

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

"""The image-reconstruction decoder of Structure Enhancement (Lv et al., ECCV-W 2018).

The paper makes the last backbone stage (res5c, our `features`) reconstruct the input image, so
that the encoder keeps the visual structure of target images. It publishes no code and no
layer-by-layer decoder (REFERENCE §2), so this one is this library's design, kept plain:

    1x1 conv F -> 4b, ReLU                        (reduce the 2048-channel layer4 map)
    3 x [4x4 transposed conv, stride 2, ReLU]     (4b -> 2b -> b -> b/2, stride 8 -> 1)
    3x3 conv b/2 -> 3, x output_scale             (linear output)
    bilinear resize to the input size             (ceil-mode stride-8 maps are 1 px larger)

with b = base_channels (64: 256 -> 128 -> 64 -> 32). No normalisation layers: the papers
train with one image per domain and batch statistics of size 1 are unreliable.

`output_scale` is a fixed factor on the last conv (not learned, not in the state_dict): the span
of the image the decoder must produce (255 for Caffe-normalised 0..255 images, 1 for RGB/255).
The layers then work in unit range whatever the image scale: an optimizer whose steps are ~lr
in parameter space (Adam) would otherwise need ~10^5 steps to reach pixel values of +-100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReconstructionDecoder(nn.Module):
    """Decode a stride-8 feature map back into an image.

    Args:
        in_channels: channels of the feature map (`segmentor.feature_channels`).
        out_channels: channels of the image (3).
        base_channels: width b; the stages have 4b, 2b, b and b/2 channels.
        output_scale: constant multiplying the output (the span of the target image).

    Shapes: features [B, in_channels, h, w] -> [B, out_channels, 8h, 8w], or
    [B, out_channels, H, W] when `output_size=(H, W)` is given.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        base_channels: int = 64,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if base_channels < 2:
            raise ValueError(f"base_channels must be >= 2, got {base_channels}")
        widths = [4 * base_channels, 2 * base_channels, base_channels, base_channels // 2]
        self.reduce = nn.Conv2d(in_channels, widths[0], kernel_size=1)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1)
            for i in range(3)
        )
        self.output = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.output_scale = float(output_scale)

    def forward(
        self, features: torch.Tensor, output_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        x = self.relu(self.reduce(features))
        for layer in self.upsample:
            x = self.relu(layer(x))
        x = self.output(x) * self.output_scale
        if output_size is not None and tuple(x.shape[-2:]) != tuple(output_size):
            x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
        return x

"""The image-reconstruction decoders of Structure Enhancement (Lv et al., ECCV-W 2018).

The paper makes the last backbone stage (res5c, our `features`) reconstruct the input image, so
that the encoder keeps the visual structure of target images, with a decoder G that "follows the
identical architecture" of UNIT's (Liu, Breuel, Kautz, NIPS 2017, the paper's reference [8]),
"except that all the layers are shared by both domains" (paper 004, section 4.2). Two decoders:

`UNITStyleDecoder` (the default, `decoder: unit_style`): the decoder of UNIT's released street-
scene generator (mingyuliutw/UNIT, 2017 code, exps/unit/synthia2cityscape.yaml: `COCOResGen`
with ch 64, n_gen_shared_blk 1, n_gen_res_blk 3, n_gen_front_blk 3; layers in
src/trainers/cocogan_nets.py and common_net.py):

    UNIT                                          here (b = base_channels, UNIT's ch)
    -                                             1x1 conv F -> 4b  (res5c has 2048 channels,
                                                                     UNIT's latent 4 x 64 = 256)
    1 shared + 3 domain INSResBlock(256)          4 INSResBlock(4b), all shared
    2 x [3x3 ConvT s2, IN, ReLU] 256->128->64     3 x [3x3 ConvT s2, IN, ReLU] 4b->2b->b->b/2
    1x1 ConvT 64 -> 3, tanh                       1x1 conv b/2 -> 3, tanh
    -                                             crop to the input size

INSResBlock = x + IN(conv3x3(ReLU(IN(conv3x3(x))))), InstanceNorm without affine parameters, as
UNIT's. res5c is at stride 8 where UNIT's latent is at stride 4, hence the third upsampling stage
(its width continues UNIT's halving) and the 1x1 projection (residual blocks at 2048 channels
would cost ~300M parameters). Conv weights are drawn from N(0, 0.02) as UNIT's
`gaussian_weights_init`; biases keep PyTorch's default. The output is an RGB image in [-1, 1],
UNIT's image range: `to_image` maps it to 0..255. Instance norm, unlike batch norm, is well
defined with one image per domain.

`ReconstructionDecoder` (`decoder: transposed_conv`, this library's first design, kept for
comparison):

    1x1 conv F -> 4b, ReLU                        (reduce the 2048-channel layer4 map)
    3 x [4x4 transposed conv, stride 2, ReLU]     (4b -> 2b -> b -> b/2, stride 8 -> 1)
    3x3 conv b/2 -> 3, x output_scale             (linear output)
    bilinear resize to the input size             (ceil-mode stride-8 maps are 1 px larger)

with no normalisation layers. `output_scale` is a fixed factor on the last conv (not learned, not
in the state_dict): the span of the image the decoder must produce (255 for Caffe-normalised
0..255 images, 1 for RGB/255). The layers then work in unit range whatever the image scale: an
optimizer whose steps are ~lr in parameter space (Adam) would otherwise need ~10^5 steps to
reach pixel values of +-100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# UNIT's `gaussian_weights_init`: conv and transposed-conv weights ~ N(0, 0.02).
UNIT_INIT_STD = 0.02


class ResidualBlock(nn.Module):
    """UNIT's `INSResBlock`: x + IN(conv3x3(ReLU(IN(conv3x3(x))))), shapes kept.

    Shapes: [B, channels, h, w] -> [B, channels, h, w].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UNITStyleDecoder(nn.Module):
    """UNIT's decoder at stride 8, all layers shared by both domains (see the module docstring).

    Args:
        in_channels: channels of the feature map (`segmentor.feature_channels`).
        out_channels: channels of the image (3).
        base_channels: width b (UNIT's ch, 64); residual blocks at 4b, upsampling to 2b, b, b/2.
        residual_blocks: residual blocks before upsampling (UNIT: 1 shared + 3 per domain = 4).

    Shapes: features [B, in_channels, h, w] -> [B, out_channels, 8h, 8w] in [-1, 1], or the
    top-left [B, out_channels, H, W] of it when `output_size=(H, W)` is given.
    """

    upsampling_stages = 3  # stride 8 -> 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        base_channels: int = 64,
        residual_blocks: int = 4,
    ) -> None:
        super().__init__()
        if base_channels < 2:
            raise ValueError(f"base_channels must be >= 2, got {base_channels}")
        if residual_blocks < 0:
            raise ValueError(f"residual_blocks must be >= 0, got {residual_blocks}")
        width = 4 * base_channels
        self.project = nn.Conv2d(in_channels, width, kernel_size=1)
        self.residual = nn.Sequential(*(ResidualBlock(width) for _ in range(residual_blocks)))
        stages = []
        for _ in range(self.upsampling_stages):
            stages += [
                # kernel 3, padding 1, output_padding 1: exactly twice the size, as UNIT's.
                nn.ConvTranspose2d(
                    width, width // 2, kernel_size=3, stride=2, padding=1, output_padding=1
                ),
                nn.InstanceNorm2d(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        self.upsample = nn.Sequential(*stages)
        self.output = nn.Conv2d(width, out_channels, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(module.weight, 0.0, UNIT_INIT_STD)

    def forward(
        self, features: torch.Tensor, output_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        x = self.residual(self.project(features))
        x = torch.tanh(self.output(self.upsample(x)))
        if output_size is None or tuple(x.shape[-2:]) == tuple(output_size):
            return x
        height, width = output_size
        if x.shape[-2] >= height and x.shape[-1] >= width:
            # A ceil-mode stride-8 map (DeepLabV2: 91 cells for 720 px) has cells past the
            # image's bottom/right edge; cell i sits at pixel ~8i, so cropping keeps the geometry
            # where a resize would shift far pixels by up to 7.
            return x[..., :height, :width]
        return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)

    @staticmethod
    def to_image(output: torch.Tensor) -> torch.Tensor:
        """The decoder's [-1, 1] output as an RGB image in 0..255 (UNIT's scaling undone)."""
        return (output + 1.0) * 127.5


class ReconstructionDecoder(nn.Module):
    """Decode a stride-8 feature map back into an image (`decoder: transposed_conv`).

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

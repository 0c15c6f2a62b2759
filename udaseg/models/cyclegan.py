"""CycleGAN's networks (Zhu et al., ICCV 2017) as BDL's translation model F uses them.

Read from junyanz/pytorch-CycleGAN-and-pix2pix `models/networks.py` and the copy BDL ships in
liyunsheng13/BDL `cyclegan/networks.py` (REFERENCE §3.3):

- `ResnetGenerator`: reflection pad 3 + 7x7 conv to `width` ("ngf", 64), two 3x3 stride-2
  convs (width x2, x4), `blocks` residual blocks at width x4 (9 for the released
  `resnet_9blocks`), two 3x3 stride-2 transposed convs back (output_padding 1), reflection pad
  3 + 7x7 conv to 3 channels, tanh. Instance norm without affine parameters after every conv but
  the last; convs before a norm have a bias (the released code's `use_bias` for instance norm).
  Residual blocks: reflection pad 1, 3x3 conv, norm, ReLU, reflection pad 1, 3x3 conv, norm, no
  dropout (CycleGAN's default `no_dropout`).
- `PatchDiscriminator` (the released `NLayerDiscriminator`, `basic` = 3 layers, "70x70
  PatchGAN"): 4x4 convs, padding 1; stride 2 for the first `layers`, then one stride-1 conv at
  min(2^layers, 8) x width and a stride-1 conv to 1 channel; LeakyReLU 0.2; instance norm after
  every conv but the first and the last; no sigmoid (LS-GAN takes the raw output).
- Weights: conv and transposed-conv weights ~ N(0, 0.02), biases 0 (`init_type normal`).

Images are in [-1, 1] on both sides (CycleGAN's normalisation); `to_generator_range` and
`from_generator_range` convert from and to udaseg's 0..255 RGB. The state_dict keys are the
released ones (`model.1.weight`, `model.10.conv_block.1.weight`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# How many stride-2 convs the generator has: input sides must be multiples of 2^this to come
# back at the same size; `ResnetGenerator.forward` pads to that multiple and crops back.
GENERATOR_DOWNSAMPLINGS = 2


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # CycleGAN's `--norm instance`: no affine parameters; statistics of each image always (the
    # current code's track_running_stats=False; see docs/methods/bdl.md for the older copy).
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x); [B, C, H, W] -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            _instance_norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            _instance_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator.

    Args:
        blocks: residual blocks at the bottleneck (9 in the released `resnet_9blocks`).
        width: channels of the first conv ("ngf", 64); the bottleneck has 4x.

    Shapes: [B, 3, H, W] in [-1, 1] -> [B, 3, H, W] in [-1, 1] (tanh). Any H, W: the input is
    reflection-padded to multiples of 4 and the output cropped back, so that odd-sized images
    (GTA5's 1914x1052) translate without a size change.
    """

    def __init__(self, blocks: int = 9, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, width, kernel_size=7, bias=True),
            _instance_norm(width),
            nn.ReLU(True),
        ]
        for level in range(GENERATOR_DOWNSAMPLINGS):
            channels = width * 2**level
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=True),
                _instance_norm(channels * 2),
                nn.ReLU(True),
            ]
        bottleneck = width * 2**GENERATOR_DOWNSAMPLINGS
        layers += [ResnetBlock(bottleneck) for _ in range(blocks)]
        for level in range(GENERATOR_DOWNSAMPLINGS, 0, -1):
            channels = width * 2**level
            layers += [
                nn.ConvTranspose2d(
                    channels,
                    channels // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=True,
                ),
                _instance_norm(channels // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 3, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        initialise_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        multiple = 2**GENERATOR_DOWNSAMPLINGS
        pad_bottom, pad_right = (-height) % multiple, (-width) % multiple
        if pad_bottom or pad_right:
            # Reflection needs pads smaller than the side; 3 <= side always holds for images.
            images = F.pad(images, (0, pad_right, 0, pad_bottom), mode="reflect")
        return self.model(images)[..., :height, :width]


class PatchDiscriminator(nn.Module):
    """CycleGAN's PatchGAN discriminator (`NLayerDiscriminator`).

    Args:
        width: channels of the first conv ("ndf", 64).
        layers: stride-2 convs (3 = the released `basic` 70x70 PatchGAN).

    Shapes: [B, 3, H, W] in [-1, 1] -> [B, 1, h, w] raw scores, h = H / 2^layers - 2.
    """

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        sequence: list[nn.Module] = [
            nn.Conv2d(3, width, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        multiplier = 1
        for layer in range(1, layers + 1):
            previous, multiplier = multiplier, min(2**layer, 8)
            # The last of these keeps the size (stride 1), as the released code's.
            stride = 2 if layer < layers else 1
            sequence += [
                nn.Conv2d(
                    width * previous,
                    width * multiplier,
                    kernel_size=4,
                    stride=stride,
                    padding=1,
                    bias=True,
                ),
                _instance_norm(width * multiplier),
                nn.LeakyReLU(0.2, True),
            ]
        sequence += [nn.Conv2d(width * multiplier, 1, kernel_size=4, stride=1, padding=1)]
        self.model = nn.Sequential(*sequence)
        initialise_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def initialise_weights(module: nn.Module, gain: float = 0.02) -> None:
    """CycleGAN's `init_type normal`: conv weights ~ N(0, gain), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def to_generator_range(images: torch.Tensor) -> torch.Tensor:
    """udaseg's float RGB 0..255 -> CycleGAN's [-1, 1] (its ToTensor + Normalize(0.5, 0.5))."""
    return images / 127.5 - 1.0


def from_generator_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> float RGB 0..255, as BDL feeds translated images to the segmentation model."""
    return (images + 1.0) * 127.5

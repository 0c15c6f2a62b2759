"""The Caffe-style dilated ResNet of DeepLabV2 (REFERENCE §1.1).

This is the backbone shared by AdaptSegNet, ADVENT, BDL, FDA, DACS, CRST and ProDA. It differs
from a torchvision ResNet in ways that change the weights' meaning and the feature sizes:
- the stride of a stage's first block sits on its 1x1 `conv1`, not on the 3x3 `conv2`;
- the stem's max-pool uses `ceil_mode=True` (1024x512 input -> 129x65 layer4 map, not 128x64);
- layer3 and layer4 keep stride 1 with dilation 2 and 4 (output stride 8), and their first
  blocks get a `downsample` branch even though only the channel count changes;
- BatchNorm affine parameters are frozen ("half frozen", REFERENCE §7.2).

Module names equal the released checkpoints' keys (`conv1`, `bn1`, `layer1..4`,
`layerN.i.conv1..3`, `layerN.i.bn1..3`, `layerN.0.downsample.{0,1}`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BatchNormMode = Literal["half_frozen", "frozen", "trainable"]
BN_MODES: tuple[str, ...] = ("half_frozen", "frozen", "trainable")

# Bottleneck counts per depth (layer1..layer4).
DEPTH_BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

EXPANSION = 4  # Bottleneck output channels = EXPANSION x its inner width


class EvalModeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and never updates them.

    Used for `bn="frozen"`: the behaviour of a BN kept in eval mode even while the model is in
    train mode. The key layout is that of `nn.BatchNorm2d` (`num_batches_tracked` included), so
    checkpoints move freely between the modes.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )


def make_batch_norm(channels: int, mode: str) -> nn.BatchNorm2d:
    """A BatchNorm2d (affine, as in the released code) configured for one of the BN modes.

    - "half_frozen" (the papers, REFERENCE §1.1/§7.2): weight and bias have requires_grad=False,
      but in train mode BN uses batch statistics and updates its running statistics.
    - "frozen": affine frozen too, and normalisation always uses the running statistics, which
      never change (a deviation from the papers, useful with small batches).
    - "trainable": an ordinary BN (ProDA, DAFormer).
    """
    if mode not in BN_MODES:
        raise ValueError(f"unknown BN mode {mode!r}; choose one of {', '.join(BN_MODES)}")
    norm = EvalModeBatchNorm2d(channels) if mode == "frozen" else nn.BatchNorm2d(channels)
    if mode != "trainable":
        for parameter in norm.parameters():
            parameter.requires_grad = False
    return norm


class Bottleneck(nn.Module):
    """Caffe-style bottleneck: 1x1 (carries the stride) -> 3x3 (dilated) -> 1x1, expansion 4.

    Shapes: [B, in_channels, H, W] -> [B, 4 * planes, H', W'] with H' = floor((H - 1) / stride) + 1.
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        bn: str = "half_frozen",
    ) -> None:
        super().__init__()
        # The stride sits on the 1x1 conv1 (ResNet v1 / Caffe, REFERENCE §1.1 "Stride placement").
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = make_batch_norm(planes, bn)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=1, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = make_batch_norm(planes, bn)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = make_batch_norm(planes * EXPANSION, bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class CaffeResNet(nn.Module):
    """DeepLabV2's dilated ResNet body: stem + layer1..layer4, output stride 8.

    Subclasses add heads as further attributes, so that the state_dict keys stay flat
    (`conv1.weight`, `layer1.0.conv1.weight`, ...) exactly as in the released checkpoints.

    Args:
        blocks: bottleneck counts of layer1..layer4, e.g. (3, 4, 23, 3) for ResNet-101.
        width: stem channels; the stages' inner widths are width x (1, 2, 4, 8) and their
            outputs 4x that. 64 is the real network (outputs 256, 512, 1024, 2048).
        bn: "half_frozen", "frozen" or "trainable" (see `make_batch_norm`).

    Attributes:
        stage_channels: output channels of layer1..layer4.
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = DEPTH_BLOCKS[101],
        width: int = 64,
        bn: str = "half_frozen",
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(count < 1 for count in blocks):
            raise ValueError(f"blocks must be four positive counts, got {blocks!r}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.bn_mode = bn
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_batch_norm(width, bn)
        self.relu = nn.ReLU(inplace=True)
        # ceil_mode=True is what makes 1024x512 give 129x65 at layer4 (REFERENCE §1.1).
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self._in_channels = width
        self.layer1 = self._make_stage(width, blocks[0], stride=1, dilation=1, bn=bn)
        self.layer2 = self._make_stage(width * 2, blocks[1], stride=2, dilation=1, bn=bn)
        self.layer3 = self._make_stage(width * 4, blocks[2], stride=1, dilation=2, bn=bn)
        self.layer4 = self._make_stage(width * 8, blocks[3], stride=1, dilation=4, bn=bn)
        self.stage_channels = tuple(width * factor * EXPANSION for factor in (1, 2, 4, 8))
        del self._in_channels

    def _make_stage(
        self, planes: int, count: int, stride: int, dilation: int, bn: str
    ) -> nn.Sequential:
        downsample = None
        # The released condition: a projection whenever the stride or the channel count changes,
        # and also for the dilated stages' first blocks (REFERENCE §1.1 "Downsample branch").
        if stride != 1 or self._in_channels != planes * EXPANSION or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(
                    self._in_channels, planes * EXPANSION, kernel_size=1, stride=stride, bias=False
                ),
                make_batch_norm(planes * EXPANSION, bn),
            )
        layers = [Bottleneck(self._in_channels, planes, stride, dilation, downsample, bn)]
        self._in_channels = planes * EXPANSION
        for _ in range(1, count):
            layers.append(Bottleneck(self._in_channels, planes, 1, dilation, None, bn))
        return nn.Sequential(*layers)

    def initialize_weights(self) -> None:
        """The released init before any loading: every conv N(0, 0.01), BN weight 1 and bias 0.

        Conv biases (only in heads) keep PyTorch's default init, as in the released code, which
        draws only the weights (REFERENCE §1.1 "Weight init").
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def backbone_modules(self) -> list[nn.Module]:
        """The modules of the papers' "1x lr" group: stem and layer1..layer4."""
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the body on an already normalised batch.

        Args:
            x: [B, 3, H, W] normalised images.

        Returns:
            (layer3 output [B, stage_channels[2], h, w], layer4 output [B, stage_channels[3],
            h, w]) with h = ceil-mode stem size / 2, i.e. about H / 8.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        layer3 = self.layer3(x)
        return layer3, self.layer4(layer3)

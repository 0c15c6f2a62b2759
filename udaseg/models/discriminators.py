"""The fully convolutional output-space discriminator of AdaptSegNet / ADVENT / BDL (REFERENCE §2).

Five 4x4 convs with stride 2 and padding 1, channels C -> 64 -> 128 -> 256 -> 512 -> 1 (for
base_channels 64), LeakyReLU(0.2) after the first four, no normalisation, no sigmoid: losses take
the logits (BCE-with-logits, or MSE for LS-GAN). Each conv maps a size n to floor(n / 2), so
the output is 1/32 of the input: 32x16 for a 1024x512 map, 40x22 for 1280x720.

AdaptSegNet and BDL name the convs `conv1..conv4, classifier`; ADVENT builds the same layers as an
`nn.Sequential`, keyed `0, 2, 4, 6, 8`. `convert_advent_discriminator_state_dict` maps the latter
onto the former, and `load_discriminator_weights` accepts either.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from udaseg.models.weights import load_state_dict_strictly, read_state_dict, resolve_source

# ADVENT's Sequential index -> our name (the odd indices are the parameter-free LeakyReLUs).
ADVENT_DISCRIMINATOR_NAMES = {
    "0": "conv1",
    "2": "conv2",
    "4": "conv3",
    "6": "conv4",
    "8": "classifier",
}


class FCDiscriminator(nn.Module):
    """Output-space discriminator.

    Args:
        in_channels: channels of the input map (num_classes for softmax or entropy maps).
        base_channels: width of the first conv ("ndf"); the others are 2x, 4x, 8x it.

    Shapes: [B, in_channels, H, W] -> [B, 1, H // 32, W // 32] (each conv floors the halving),
    raw logits (source = 0, target = 1 in the papers' convention).
    """

    def __init__(self, in_channels: int, base_channels: int = 64) -> None:
        super().__init__()
        width = base_channels

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1)

        self.conv1 = conv(in_channels, width)
        self.conv2 = conv(width, width * 2)
        self.conv3 = conv(width * 2, width * 4)
        self.conv4 = conv(width * 4, width * 8)
        self.classifier = conv(width * 8, 1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.leaky_relu(self.conv1(x))
        x = self.leaky_relu(self.conv2(x))
        x = self.leaky_relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)


def convert_advent_discriminator_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename ADVENT's Sequential keys (`0.weight`, ..., `8.bias`) to ours (`conv1.weight`, ...).

    Keys already in our layout pass through unchanged; any other key is kept as is, so that the
    strict load that follows reports it.
    """
    converted = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        converted[f"{ADVENT_DISCRIMINATOR_NAMES.get(head, head)}.{rest}" if rest else key] = value
    return converted


def load_discriminator_weights(
    discriminator: FCDiscriminator, source: str | Path, sha256: str | None = None
) -> None:
    """Load AdaptSegNet/BDL- or ADVENT-keyed discriminator weights (path or URL) strictly.

    Raises:
        CheckpointError: the file cannot be read or does not fit the discriminator.
    """
    path = resolve_source(source, sha256=sha256)
    state_dict = convert_advent_discriminator_state_dict(read_state_dict(path))
    load_state_dict_strictly(
        discriminator,
        state_dict,
        path,
        target=f"FCDiscriminator(in_channels={discriminator.conv1.in_channels})",
    )

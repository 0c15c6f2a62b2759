"""Input normalisation presets: the preprocessing that belongs to a set of weights.

Batches reach a segmentor as float RGB in 0..255 (docs/architecture.md); the segmentor applies
its preset itself, so raw-pixel operations (FDA, colour jitter, mixing) happen before it.

Presets:
- `caffe_bgr`: RGB -> BGR, keep 0..255, subtract the Caffe ImageNet mean (B, G, R) =
  (104.00698793, 116.66876762, 122.67891434), no std. What the released DeepLabV2 checkpoints of
  AdaptSegNet/ADVENT/BDL/FDA/DACS expect (REFERENCE §1.1 "Input preprocessing").
- `imagenet`: /255, subtract (0.485, 0.456, 0.406), divide by (0.229, 0.224, 0.225), RGB order
  (torchvision-style ImageNet weights).
- `unit`: /255 only, RGB order (ProDA, REFERENCE §1.4 "Inputs").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from udaseg.errors import ConfigError

NormalizationPreset = Literal["caffe_bgr", "imagenet", "unit"]

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

PRESETS: tuple[str, ...] = ("caffe_bgr", "imagenet", "unit")


def preset_constants(preset: str) -> tuple[bool, list[float], list[float]]:
    """The affine map of a preset, applied per channel after an optional RGB->BGR reorder.

    Returns:
        (to_bgr, offset, scale) such that `out[:, c] = (x[:, c] - offset[c]) * scale[c]`, where
        `x` is the 0..255 input, reordered to BGR first when `to_bgr`.
    """
    if preset == "caffe_bgr":
        return True, list(CAFFE_MEAN_BGR), [1.0, 1.0, 1.0]
    if preset == "imagenet":
        # (x / 255 - mean) / std == (x - 255 * mean) * (1 / (255 * std))
        offset = [255.0 * mean for mean in IMAGENET_MEAN_RGB]
        scale = [1.0 / (255.0 * std) for std in IMAGENET_STD_RGB]
        return False, offset, scale
    if preset == "unit":
        return False, [0.0, 0.0, 0.0], [1.0 / 255.0] * 3
    raise ConfigError(f"unknown input normalisation {preset!r}; choose one of {', '.join(PRESETS)}")


def normalize_images(images: torch.Tensor, preset: str) -> torch.Tensor:
    """Normalise a batch the way the weights of `preset` expect.

    Args:
        images: float [B, 3, H, W], RGB, values in 0..255.
        preset: "caffe_bgr", "imagenet" or "unit".

    Returns:
        float [B, 3, H, W] (BGR channel order for "caffe_bgr", RGB otherwise).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    to_bgr, offset, scale = preset_constants(preset)
    if to_bgr:
        images = images.flip(1)
    offset_tensor = torch.tensor(offset, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    scale_tensor = torch.tensor(scale, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - offset_tensor) * scale_tensor


class InputNormalization(nn.Module):
    """`normalize_images` as a module whose constants follow `.to(device)`.

    The constants are non-persistent buffers, so they never appear in a state_dict and the
    released checkpoints' key layout is untouched.

    Shapes: [B, 3, H, W] float RGB 0..255 -> [B, 3, H, W] float.
    """

    def __init__(self, preset: str) -> None:
        super().__init__()
        to_bgr, offset, scale = preset_constants(preset)
        self.preset = preset
        self.to_bgr = to_bgr
        self.register_buffer("offset", torch.tensor(offset).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        if self.to_bgr:
            images = images.flip(1)
        offset = self.offset.to(images.dtype)
        scale = self.scale.to(images.dtype)
        return (images - offset) * scale

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}"

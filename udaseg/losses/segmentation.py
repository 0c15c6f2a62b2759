"""Supervised segmentation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from udaseg.data.label_spaces import IGNORE_INDEX


def upsample_logits(
    logits: torch.Tensor, size: tuple[int, int], align_corners: bool = True
) -> torch.Tensor:
    """Bilinear upsampling of logits to a label size.

    The DeepLabV2 papers (AdaptSegNet, ADVENT, BDL, FDA) upsample the stride-8 logits to the
    input size with align_corners=True before the loss (REFERENCE §7.11).

    Args:
        logits: [B, C, h, w].
        size: (H, W) to reach.
    Returns:
        [B, C, H, W]; the input itself when it already has that size.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = True,
) -> torch.Tensor:
    """Pixel-wise cross-entropy after upsampling the logits to the label size.

    Args:
        logits: [B, C, h, w] (any resolution).
        labels: int64 [B, H, W] train ids, `ignore_index` for void.
    Returns:
        scalar: mean over non-void pixels (0 if every pixel is void, so an all-void crop
        cannot produce NaN).
    """
    logits = upsample_logits(logits, tuple(labels.shape[-2:]), align_corners)
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)

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
    # float32 before upsampling: under bf16 autocast the upsampled logits and the loss would
    # otherwise be rounded, which the papers' fp32 loss is not.
    logits = upsample_logits(logits.float(), tuple(labels.shape[-2:]), align_corners)
    # The mean over non-void pixels as sum / max(count, 1): no host sync to test for an
    # all-void crop (a GPU would wait for it every step), and 0 rather than NaN for one.
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


def source_segmentation_loss(
    outputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    lambda_aux: float,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The supervised loss of a segmentor's outputs: main head, plus the aux head if any.

    AdaptSegNet's multi-level models train the layer3 head too, weighted by λ_seg (0.1); every
    method built on them computes this same sum on its labelled images.

    Args:
        outputs: a segmentor's outputs, "logits" [B, C, h, w] and optionally "aux_logits".
        labels: int64 [B, H, W] train ids, `ignore_index` for void.
        lambda_aux: weight of the aux head's cross-entropy.
    Returns:
        the scalar loss, and detached {"loss_seg", "loss_seg_aux" (multi-level only)} to log.
    """
    loss_main = segmentation_loss(outputs["logits"], labels, ignore_index)
    loss = loss_main
    scalars = {"loss_seg": loss_main.detach()}
    if "aux_logits" in outputs:
        loss_aux = segmentation_loss(outputs["aux_logits"], labels, ignore_index)
        loss = loss + lambda_aux * loss_aux
        scalars["loss_seg_aux"] = loss_aux.detach()
    return loss, scalars


def upsampled_softmax(
    logits: torch.Tensor, size: tuple[int, int], align_corners: bool = True
) -> torch.Tensor:
    """Class probabilities at an image size: logits upsampled bilinearly, softmax in float32.

    Args:
        logits: [B, C, h, w] at the network's output stride (any dtype, e.g. bf16 under AMP).
        size: (H, W) to reach, usually the input image's.
    Returns:
        float32 [B, C, H, W] probabilities, attached to the graph of `logits`.
    """
    return torch.softmax(upsample_logits(logits, size, align_corners).float(), dim=1)

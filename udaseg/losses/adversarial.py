"""Domain-classification losses of adversarial alignment.

Convention of AdaptSegNet, ADVENT and BDL (REFERENCE §2): source = 0, target = 1. The
discriminator outputs logits (no sigmoid); "vanilla" GANs take binary cross-entropy with logits,
LS-GAN the squared error of the raw output (AdaptSegNet's `--gan LS`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

SOURCE_DOMAIN = 0.0
TARGET_DOMAIN = 1.0

GanLoss = Literal["vanilla", "lsgan"]


def domain_loss(
    discriminator_output: torch.Tensor, domain: float, gan: GanLoss = "vanilla"
) -> torch.Tensor:
    """Loss of a discriminator output against one constant domain label.

    Args:
        discriminator_output: logits of any shape, e.g. [B, 1, h, w] (one per patch).
        domain: SOURCE_DOMAIN (0) or TARGET_DOMAIN (1).
        gan: "vanilla" = mean binary cross-entropy with logits; "lsgan" = mean (output - label)^2.
    Returns:
        scalar, averaged over every element.
    """
    output = discriminator_output.float()
    target = torch.full_like(output, domain)
    if gan == "vanilla":
        return F.binary_cross_entropy_with_logits(output, target)
    if gan == "lsgan":
        return F.mse_loss(output, target)
    raise ValueError(f"unknown GAN loss {gan!r}; expected 'vanilla' or 'lsgan'")

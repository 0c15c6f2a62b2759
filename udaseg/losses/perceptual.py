"""BDL's perceptual (semantic-consistency) loss through the frozen segmentation model M.

Two forms (docs/methods/bdl.md):
- `"released"` (liyunsheng13/BDL cyclegan/cycle_gan_model.py, REFERENCE §3.3): the mean squared
  difference between the instance-normalised logits of M (each image's channel normalised to
  zero mean and unit variance over its pixels, no affine parameters, eps 1e-5: torch's
  `InstanceNorm2d(19, affine=False)`);
- `"paper"` (BDL, CVPR 2019, Eq. 2; seed 000): the L1 distance between M's outputs, averaged
  over every element.

The weights (0.1 for the translation terms, 10 for the reconstruction terms in the released
code; lambda_per and lambda_per_recon in the paper) are applied by the caller.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PerceptualForm = Literal["released", "paper"]
# torch's InstanceNorm2d default, which the released code uses.
INSTANCE_NORM_EPS = 1e-5


def instance_normalized(logits: torch.Tensor) -> torch.Tensor:
    """Each [h, w] channel of each image shifted to mean 0 and scaled to variance 1.

    Args:
        logits: [B, C, h, w].
    Returns:
        [B, C, h, w]: (x - mean) / sqrt(var + 1e-5), mean and biased variance over h, w.
    """
    return F.instance_norm(logits.float(), eps=INSTANCE_NORM_EPS)


def perceptual_loss(
    logits: torch.Tensor, reference_logits: torch.Tensor, form: PerceptualForm = "released"
) -> torch.Tensor:
    """Distance between M's outputs for a generated image and for the image it should match.

    Args:
        logits: [B, C, h, w] M's logits for F(S), F^-1(T) or a reconstruction; attached to the
            generators' graph (M is frozen, the gradient reaches the generator).
        reference_logits: [B, C, h, w] M's logits for the real image; treated as a constant.
        form: "released" = mean((IN(logits) - IN(reference))^2); "paper" = mean(|logits -
            reference|).
    Returns:
        float32 scalar.
    """
    if logits.shape != reference_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and reference {tuple(reference_logits.shape)} differ "
            "in shape"
        )
    reference = reference_logits.detach()
    if form == "released":
        return F.mse_loss(instance_normalized(logits), instance_normalized(reference))
    if form == "paper":
        return F.l1_loss(logits.float(), reference.float())
    raise ValueError(f"unknown perceptual form {form!r}; expected 'released' or 'paper'")

"""Image reconstruction loss of Structure Enhancement (Lv et al., ECCV-W 2018).

The paper penalises the L1 distance between the decoder's reconstruction and the input image
(eq. (1): L_1(G∘E(I_S), I_S) + L_1(G∘E(I_T), I_T)), weighted by lambda_rec = 1e-5. No official
code is public (REFERENCE §2); the reduction (a mean over every element) and the image scale it
is computed at (by default the segmentor's normalised input: both images go through the same
normalisation first) are this library's reading, argued in docs/methods/structure_enhancement.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between a reconstruction and the image it reconstructs.

    Args:
        reconstruction: [B, 3, H, W] decoder output.
        images: [B, 3, H, W] the reconstruction target (same scale as the decoder is asked to
            produce); treated as a constant.
    Returns:
        float32 scalar: mean over batch, channels and pixels of |reconstruction - images|.
    """
    if reconstruction.shape != images.shape:
        raise ValueError(
            f"reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} "
            "differ in shape"
        )
    return F.l1_loss(reconstruction.float(), images.detach().float())

"""The two halves of adversarial alignment, shared by AdaptSegNet, ADVENT and the others.

The order of AdaptSegNet's and ADVENT's training step (REFERENCE §2):
1. generator: the discriminator, frozen, sees target maps and the segmentor is pushed to make
   them look like source (label 0); gradients flow through the discriminator into the segmentor
   but never reach the discriminator's parameters;
2. discriminator: it learns to tell detached source maps (0) from detached target maps (1),
   each term halved and backpropagated on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from udaseg.losses.adversarial import SOURCE_DOMAIN, TARGET_DOMAIN, GanLoss, domain_loss
from udaseg.methods.base import StepContext, frozen

# The discriminators' optimizer in AdaptSegNet, ADVENT and BDL (REFERENCE §2): Adam 1e-4,
# betas (0.9, 0.99), no weight decay, poly-decayed by the engine over the segmentor's horizon.
DISCRIMINATOR_ADAM = {
    "name": "adam",
    "lr": 1e-4,
    "betas": (0.9, 0.99),
    "weight_decay": 0.0,
    "head_lr_multiplier": 1.0,
}


def fool_discriminator_loss(
    discriminator: nn.Module, target_maps: torch.Tensor, gan: GanLoss = "vanilla"
) -> torch.Tensor:
    """Generator term: how far the frozen discriminator is from calling target maps source.

    Args:
        discriminator: the domain classifier; its parameters get no gradient from this loss.
        target_maps: [B, C, H, W] maps computed from target images (softmax, entropy, ...),
            attached to the segmentor's graph.
    Returns:
        scalar loss, to be weighted by the method's lambda_adv.
    """
    with frozen(discriminator):
        return domain_loss(discriminator(target_maps), SOURCE_DOMAIN, gan)


def train_discriminator(
    discriminator: nn.Module,
    source_maps: torch.Tensor,
    target_maps: torch.Tensor,
    ctx: StepContext,
    gan: GanLoss = "vanilla",
) -> dict[str, torch.Tensor]:
    """Discriminator term: source maps -> 0, target maps -> 1, each halved and backpropagated.

    The maps are detached here, so this step updates the discriminator only.

    Returns:
        the two detached losses, for logging.
    """
    loss_source = domain_loss(discriminator(source_maps.detach()), SOURCE_DOMAIN, gan) / 2
    ctx.backward(loss_source)
    loss_target = domain_loss(discriminator(target_maps.detach()), TARGET_DOMAIN, gan) / 2
    ctx.backward(loss_target)
    return {"loss_d_source": loss_source.detach(), "loss_d_target": loss_target.detach()}

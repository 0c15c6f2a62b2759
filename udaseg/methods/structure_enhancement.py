"""Structure Enhancement (Lv et al., ECCV Workshops 2018).

Two additions to source-only training (REFERENCE §2; no official code exists, the paper is the
only source, and docs/methods/structure_enhancement.md lists what this file chooses):
- feature level: a decoder fed by the last backbone stage (layer4 = res5c) reconstructs the
  input image, source and target alike, with an L1 loss weighted by lambda_rec = 1e-5; its
  gradient reaches the encoder, which must keep the target images' visual structure;
- output level: AdaptSegNet-style adversarial alignment of the segmentation softmax with an ASPP
  discriminator (four parallel 3x3 convs at rates 1-4), lambda_adv = 1e-3.

Step order, as AdaptSegNet's (REFERENCE §2): (1) source cross-entropy + source reconstruction,
backward; (2) target reconstruction + the generator term through the frozen discriminator
(target -> source label 0), backward; (3) the discriminator on the detached source (0) and
target (1) softmax maps, each halved. Softmax maps are taken after upsampling the logits to each
domain's input size (align_corners=True). A multi-level model also trains its aux head on source
(lambda_seg_aux); the paper has no aux discriminator, so none is added.

The reconstruction target is, by default, the segmentor's own normalised input (Caffe BGR,
mean-subtracted, 0..255 for the DeepLabV2 weights): the image as the encoder receives it, and
the scale at which lambda_rec = 1e-5 puts the loss on the order of the adversarial term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from udaseg.data.label_spaces import LabelSpace
from udaseg.errors import ConfigError
from udaseg.losses.reconstruction import reconstruction_loss
from udaseg.losses.segmentation import source_segmentation_loss, upsampled_softmax
from udaseg.methods.adversarial import (
    DISCRIMINATOR_ADAM,
    fool_discriminator_loss,
    train_discriminator,
)
from udaseg.methods.base import Method, StepContext, check_non_negative
from udaseg.models.aspp_discriminator import ASPPDiscriminator
from udaseg.models.decoders import ReconstructionDecoder
from udaseg.registry import METHODS


@dataclass
class StructureEnhancementConfig:
    name: str = "structure_enhancement"
    lambda_seg_aux: float = 0.1  # λ_seg for the aux (layer3) head, multi-level only
    lambda_rec: float = 1e-5  # λ_rec: weight of the L1 reconstruction loss (each domain)
    lambda_adv: float = 1e-3  # λ_adv: weight of the generator term of output alignment
    # What the decoder reconstructs: "network_input" = the image as the segmentor normalises
    # it (0..255 scale, Caffe mean subtracted, for the DeepLabV2 weights); "unit" = RGB / 255.
    reconstruction_target: Literal["network_input", "unit"] = "network_input"
    decoder_channels: int = 64  # base width b of the decoder (4b -> 2b -> b -> b/2)
    discriminator_channels: int = 64  # output channels of each ASPP branch
    discriminator_dilations: tuple[int, ...] = (1, 2, 3, 4)  # the paper's four rates

    def validate(self) -> None:
        check_non_negative(self)
        if not self.discriminator_dilations or min(self.discriminator_dilations) < 1:
            raise ConfigError(
                f"discriminator_dilations: must be positive, got {list(self.discriminator_dilations)}"
            )
        if self.decoder_channels < 2 or self.discriminator_channels < 1:
            raise ConfigError("decoder_channels must be >= 2 and discriminator_channels >= 1")


@METHODS.register("structure_enhancement")
class StructureEnhancement(Method):
    Config = StructureEnhancementConfig
    # The decoder takes the discriminator's Adam: its gradients carry lambda_rec = 1e-5, which
    # SGD at the segmentor's lr would turn into no training at all, whereas Adam's step size
    # does not depend on the loss scale.
    default_optimizers = {"discriminator": DISCRIMINATOR_ADAM, "decoder": DISCRIMINATOR_ADAM}

    def __init__(self, config: Any, segmentor: nn.Module, label_space: LabelSpace) -> None:
        super().__init__(config, segmentor, label_space)
        self.decoder = ReconstructionDecoder(
            segmentor.feature_channels,
            out_channels=3,
            base_channels=config.decoder_channels,
            output_scale=self.target_span(),
        )
        self.discriminator = ASPPDiscriminator(
            segmentor.num_classes,
            base_channels=config.discriminator_channels,
            dilations=tuple(config.discriminator_dilations),
        )

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {
            "segmentor": self.segmentor,
            "decoder": self.decoder,
            "discriminator": self.discriminator,
        }

    def reconstruction_target(self, images: torch.Tensor) -> torch.Tensor:
        """The image the decoder should produce. images: float [B, 3, H, W] RGB 0..255."""
        if self.config.reconstruction_target == "unit":
            return images / 255.0
        return self.segmentor.normalize(images)

    @torch.no_grad()
    def target_span(self) -> float:
        """How far apart black and white pixels are in the reconstruction target (255 for the
        Caffe preset, 1 for "unit"): the decoder's output scale, so that it learns in unit range."""
        device = next(self.segmentor.parameters()).device
        black = torch.zeros(1, 3, 1, 1, device=device)
        white = torch.full((1, 3, 1, 1), 255.0, device=device)
        difference = self.reconstruction_target(white) - self.reconstruction_target(black)
        return float(difference.abs().mean())

    def _reconstruction_loss(self, outputs: dict, images: torch.Tensor) -> torch.Tensor:
        reconstruction = self.decoder(outputs["features"], tuple(images.shape[-2:]))
        return reconstruction_loss(reconstruction, self.reconstruction_target(images))

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        source, target = batch["source"], batch["target"]

        # (1) Source: supervised loss + reconstruction (its gradient reaches the encoder).
        outputs = self.segmentor(source["image"])
        loss_seg, scalars = source_segmentation_loss(
            outputs, source["label"], config.lambda_seg_aux
        )
        loss_rec_source = self._reconstruction_loss(outputs, source["image"])
        scalars["loss_rec_source"] = loss_rec_source.detach()
        ctx.backward(loss_seg + config.lambda_rec * loss_rec_source)
        source_logits = outputs["logits"].detach()
        del outputs

        # (2) Target: reconstruction + make the frozen discriminator call target source.
        target_outputs = self.segmentor(target["image"])
        loss_rec_target = self._reconstruction_loss(target_outputs, target["image"])
        target_size = tuple(target["image"].shape[-2:])
        target_maps = upsampled_softmax(target_outputs["logits"], target_size)
        loss_adv = fool_discriminator_loss(self.discriminator, target_maps)
        ctx.backward(config.lambda_rec * loss_rec_target + config.lambda_adv * loss_adv)
        scalars["loss_rec_target"] = loss_rec_target.detach()
        scalars["loss_adv"] = loss_adv.detach()
        del target_outputs

        # (3) Discriminator: detached source softmax -> 0, target softmax -> 1, each halved.
        source_size = tuple(source["image"].shape[-2:])
        source_maps = upsampled_softmax(source_logits, source_size)
        scalars.update(train_discriminator(self.discriminator, source_maps, target_maps, ctx))
        return scalars

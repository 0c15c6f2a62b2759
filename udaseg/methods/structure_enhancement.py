"""Structure Enhancement (Lv, Lian, Yang, Lin, Pan, Duan, ECCV Workshops 2018; seed paper 004).

Two additions to source-only training (no official code exists, REFERENCE §2: the paper is the
only source; docs/methods/structure_enhancement.md says which choice is the paper's and which is
this library's):
- feature level, eq. (1): a decoder G fed by res5c (layer4, our `features`) reconstructs the
  input image, source and target alike, with an L1 loss weighted by lambda_rec = 1e-5. G is
  UNIT's decoder with all layers shared by both domains (`decoder: unit_style`,
  models/decoders.py); this library's first decoder stays as `decoder: transposed_conv`;
- output level, eq. (2): adversarial alignment of the segmentation softmax with an ASPP
  discriminator (four parallel 3x3 convs at rates 1-4, a conv, a sigmoid), lambda_adv = 1e-3.
  The segmentor minimises eq. (2)'s target term, log(1 - D(target)) with D the probability of
  source (`generator_loss: minimax`); `non_saturating` minimises -log D(target) instead, as
  AdaptSegNet's code (BCE towards the source label), which the first version did.

"The parameters of the encoding network E is updated by averaging the gradients from each
branch" (section 3): with `encoder_gradient: average` the encoder E (the segmentor's "backbone"
parameters: stem and layer1-4) receives half the segmentation branch's gradient (the CE and the
adversarial term, through S) plus half the reconstruction branch's (through G), while S (the
classifier heads) and G receive their own gradients unscaled. Both branches reach E through its
parameters only, so the average is a gradient hook scaling every encoder parameter's incoming
gradient by 1/2 during the step. With lambda_rec = 0 the reconstruction branch does not exist
and the segmentation branch alone reaches E, at full weight. `sum` is the first version's.

Step order, as AdaptSegNet's (REFERENCE §2): (1) source cross-entropy + source reconstruction,
backward; (2) target reconstruction + the generator term through the frozen discriminator,
backward; (3) the discriminator on the detached source (label 0) and target (1) softmax maps,
each halved. Softmax maps are taken after upsampling the logits to each domain's input size
(align_corners=True). A multi-level model also trains its aux head on source (lambda_seg_aux);
the paper has no aux discriminator, so none is added. A lambda set to 0 removes its branch from
the step (no decoder or no discriminator pass): the paper's ablations "output-level" and
"feature-level" of Table 1.

The reconstruction is compared with the image at the segmentor's own normalised input scale by
default (Caffe BGR, mean-subtracted, 0..255 for the DeepLabV2 weights): the scale at which
lambda_rec = 1e-5 puts the loss on the order of the adversarial term. The UNIT-style decoder
produces an RGB image in [-1, 1] (UNIT's range), which goes through the same normalisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from udaseg.data.label_spaces import LabelSpace
from udaseg.errors import ConfigError
from udaseg.losses.adversarial import TARGET_DOMAIN, domain_loss
from udaseg.losses.reconstruction import reconstruction_loss
from udaseg.losses.segmentation import source_segmentation_loss, upsampled_softmax
from udaseg.methods.adversarial import (
    DISCRIMINATOR_ADAM,
    fool_discriminator_loss,
    train_discriminator,
)
from udaseg.methods.base import Method, StepContext, check_non_negative, frozen
from udaseg.models.aspp_discriminator import ASPPDiscriminator
from udaseg.models.decoders import ReconstructionDecoder, UNITStyleDecoder
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
    # G: "unit_style" = UNIT's decoder (paper); "transposed_conv" = the first version's.
    decoder: Literal["unit_style", "transposed_conv"] = "unit_style"
    decoder_channels: int = 64  # base width b: UNIT's ch (residual blocks at 4b)
    decoder_residual_blocks: int = 4  # unit_style: UNIT's 1 shared + 3 per-domain blocks
    # Encoder gradient: "average" of the two branches (paper, section 3) or their "sum".
    encoder_gradient: Literal["average", "sum"] = "average"
    # Generator term: "minimax" = eq. (2)'s log(1 - D(target)); "non_saturating" =
    # -log D(target), AdaptSegNet's BCE towards the source label (D = P(source)).
    generator_loss: Literal["minimax", "non_saturating"] = "minimax"
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
        if self.decoder_residual_blocks < 0:
            raise ConfigError(
                f"decoder_residual_blocks: must be >= 0, got {self.decoder_residual_blocks}"
            )


@METHODS.register("structure_enhancement")
class StructureEnhancement(Method):
    Config = StructureEnhancementConfig
    # G and D: "optimized by Adam with momentum of 0.99" (paper 004, section 4.2), read as
    # AdaptSegNet's Adam, betas (0.9, 0.99), lr 1e-4, since "our experimental setting follows
    # [14]" (AdaptSegNet). E and S take the segmentor's SGD (momentum 0.9, lr 2.5e-4, poly 0.9).
    default_optimizers = {"discriminator": DISCRIMINATOR_ADAM, "decoder": DISCRIMINATOR_ADAM}

    def __init__(self, config: Any, segmentor: nn.Module, label_space: LabelSpace) -> None:
        super().__init__(config, segmentor, label_space)
        if config.decoder == "unit_style":
            self.decoder: nn.Module = UNITStyleDecoder(
                segmentor.feature_channels,
                out_channels=3,
                base_channels=config.decoder_channels,
                residual_blocks=config.decoder_residual_blocks,
            )
        else:
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
        Caffe preset, 1 for "unit"): the transposed_conv decoder's output scale."""
        device = next(self.segmentor.parameters()).device
        black = torch.zeros(1, 3, 1, 1, device=device)
        white = torch.full((1, 3, 1, 1), 255.0, device=device)
        difference = self.reconstruction_target(white) - self.reconstruction_target(black)
        return float(difference.abs().mean())

    def reconstruct(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """G∘E: features [B, F, h, w] -> [B, 3, H, W] at the reconstruction target's scale."""
        output = self.decoder(features, size)
        if self.config.decoder == "unit_style":
            # UNIT's [-1, 1] RGB image, normalised as the input image is.
            return self.reconstruction_target(UNITStyleDecoder.to_image(output))
        return output  # the transposed_conv decoder produces the target's scale directly

    def _reconstruction_loss(self, outputs: dict, images: torch.Tensor) -> torch.Tensor:
        reconstruction = self.reconstruct(outputs["features"], tuple(images.shape[-2:]))
        return reconstruction_loss(reconstruction, self.reconstruction_target(images))

    def generator_loss(self, target_maps: torch.Tensor) -> torch.Tensor:
        """The segmentor's adversarial term on target softmax maps [B, C, H, W], frozen D.

        minimax: mean log(1 - D_src) = mean log sigmoid(z) = -BCE(z, target label), eq. (2);
        non_saturating: mean -log D_src = BCE(z, source label), AdaptSegNet's.
        """
        if self.config.generator_loss == "non_saturating":
            return fool_discriminator_loss(self.discriminator, target_maps)
        with frozen(self.discriminator):
            return -domain_loss(self.discriminator(target_maps), TARGET_DOMAIN)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """E: the parameters the segmentor lists as "backbone" (DeepLabV2: stem, layer1-4)."""
        return list(self.segmentor.param_groups()["backbone"])

    def encoder_gradient_scale(self) -> float:
        """1 / number of branches reaching E when averaging (the segmentation branch always,
        the reconstruction branch when lambda_rec > 0); 1 when summing."""
        if self.config.encoder_gradient == "sum":
            return 1.0
        return 1.0 / (1 + (self.config.lambda_rec > 0))

    @contextlib.contextmanager
    def scaled_encoder_gradients(self) -> Iterator[None]:
        """Within the block, every gradient reaching an encoder parameter is multiplied by
        `encoder_gradient_scale()`; S's and G's parameters are untouched."""
        scale = self.encoder_gradient_scale()
        if scale == 1.0:
            yield
            return
        handles = [
            parameter.register_hook(lambda gradient: gradient * scale)
            for parameter in self.encoder_parameters()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        with self.scaled_encoder_gradients():
            return self._training_step(batch, ctx)

    def _training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        source, target = batch["source"], batch["target"]
        reconstructs, aligns = config.lambda_rec > 0, config.lambda_adv > 0

        # (1) Source: supervised loss + reconstruction (its gradient reaches the encoder).
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(outputs, source["label"], config.lambda_seg_aux)
        if reconstructs:
            loss_rec_source = self._reconstruction_loss(outputs, source["image"])
            scalars["loss_rec_source"] = loss_rec_source.detach()
            loss = loss + config.lambda_rec * loss_rec_source
        ctx.backward(loss)
        source_logits = outputs["logits"].detach()
        del outputs, loss
        if not (reconstructs or aligns):
            return scalars

        # (2) Target: reconstruction + make the frozen discriminator call target source.
        target_outputs = self.segmentor(target["image"])
        loss = 0.0
        if reconstructs:
            loss_rec_target = self._reconstruction_loss(target_outputs, target["image"])
            scalars["loss_rec_target"] = loss_rec_target.detach()
            loss = config.lambda_rec * loss_rec_target
        if aligns:
            target_size = tuple(target["image"].shape[-2:])
            target_maps = upsampled_softmax(target_outputs["logits"], target_size)
            loss_adv = self.generator_loss(target_maps)
            scalars["loss_adv"] = loss_adv.detach()
            loss = loss + config.lambda_adv * loss_adv
        ctx.backward(loss)
        del target_outputs, loss

        # (3) Discriminator: detached source softmax -> 0, target softmax -> 1, each halved.
        if aligns:
            source_size = tuple(source["image"].shape[-2:])
            source_maps = upsampled_softmax(source_logits, source_size)
            scalars.update(train_discriminator(self.discriminator, source_maps, target_maps, ctx))
        return scalars

"""AdaptSegNet (Tsai et al., CVPR 2018): adversarial alignment of the segmentation output space.

One step, in the order of wasidennis/AdaptSegNet's train_gta2cityscapes_multi.py (REFERENCE §2,
§3.1):
1. source: cross-entropy of the main head plus lambda_seg_aux x that of the aux head (layer3,
   multi-level models only), backpropagated;
2. generator: target logits upsampled (bilinear, align_corners=True) to the input size, softmax,
   through each frozen discriminator, binary cross-entropy toward the SOURCE label 0, weighted by
   lambda_adv per level and backpropagated: the gradient reaches the segmentor, never the
   discriminators;
3. discriminators: detached source softmaxes -> 0 and target softmaxes -> 1, each term halved.

A multi-level model has one discriminator per level (`"main"` on layer4's head, `"aux"` on
layer3's), held in one `nn.ModuleDict` trained by one Adam: Adam is per-parameter, so this equals
the two Adams of the released code with the same settings.

`adaptsegnet_feature` is the paper's "feature adaptation" comparison: the same three steps with a
discriminator on the layer4 features instead of the softmax. Its discriminator was never released
(REFERENCE §2); see docs/methods/adaptsegnet.md for the choice made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from udaseg.errors import ConfigError
from udaseg.losses.segmentation import source_segmentation_loss, upsampled_softmax
from udaseg.methods.adversarial import (
    DISCRIMINATOR_ADAM,
    fool_discriminator_loss,
    train_discriminator,
)
from udaseg.methods.base import Method, StepContext, check_non_negative
from udaseg.models.discriminators import FCDiscriminator
from udaseg.models.gradient_reversal import PixelDomainClassifier
from udaseg.registry import METHODS


@dataclass
class AdaptSegNetConfig:
    name: str = "adaptsegnet"
    lambda_seg_aux: float = 0.1  # λ_seg: aux-head (layer3) CE weight, multi-level models only
    lambda_adv_main: float = 0.001  # λ_adv (main head, layer4); code: lambda_adv_target2
    lambda_adv_aux: float = 0.0002  # λ_adv for the aux head (layer3); code: lambda_adv_target1
    gan: Literal["vanilla", "lsgan"] = "vanilla"  # BCE, or LS-GAN's squared error (`--gan LS`)
    discriminator_channels: int = 64  # ndf: the first conv's width in FCDiscriminator

    def validate(self) -> None:
        check_non_negative(self)


@METHODS.register("adaptsegnet")
class AdaptSegNet(Method):
    Config = AdaptSegNetConfig
    default_optimizers = {"discriminator": DISCRIMINATOR_ADAM}

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.discriminators = nn.ModuleDict(self.build_discriminators())

    def build_discriminators(self) -> dict[str, nn.Module]:
        """One output-space discriminator per level of the segmentor, on C-channel softmaxes."""
        levels = ["main", "aux"] if getattr(self.segmentor, "multi_level", False) else ["main"]
        channels = self.segmentor.num_classes
        width = self.config.discriminator_channels
        return {level: FCDiscriminator(channels, width) for level in levels}

    def adversarial_weights(self) -> dict[str, float]:
        return {"main": self.config.lambda_adv_main, "aux": self.config.lambda_adv_aux}

    def discriminator_inputs(
        self, outputs: dict[str, torch.Tensor], image_size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """What each discriminator sees: the softmax of the logits upsampled to the image.

        Args:
            outputs: the segmentor's outputs for images [B, 3, H, W].
            image_size: (H, W).
        Returns:
            level -> [B, C, H, W] probabilities, attached to the segmentor's graph.
        """
        logits = {"main": outputs["logits"], "aux": outputs.get("aux_logits")}
        return {
            level: upsampled_softmax(logits[level], image_size) for level in self.discriminators
        }

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "discriminator": self.discriminators}

    def target_loss(
        self, target: dict[str, Any], outputs: dict[str, torch.Tensor], scalars: dict[str, Any]
    ) -> torch.Tensor | float:
        """Extra target terms backpropagated with the generator's; AdaptSegNet has none."""
        return 0.0

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source, target = batch["source"], batch["target"]

        # 1. Segmentation on the labelled source images.
        source_outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(
            source_outputs, source["label"], self.config.lambda_seg_aux
        )
        ctx.backward(loss)
        # The source maps are kept, without a graph, for the discriminators' step (3.).
        with torch.no_grad():
            source_maps = self.discriminator_inputs(
                source_outputs, tuple(source["image"].shape[-2:])
            )
        del source_outputs, loss

        # 2. Generator: target maps should look like source (label 0) to frozen discriminators.
        target_outputs = self.segmentor(target["image"])
        target_maps = self.discriminator_inputs(target_outputs, tuple(target["image"].shape[-2:]))
        weights = self.adversarial_weights()
        loss_adv = 0.0
        for level, maps in target_maps.items():
            level_loss = fool_discriminator_loss(self.discriminators[level], maps, self.config.gan)
            loss_adv = loss_adv + weights[level] * level_loss
            scalars[_scalar_name("loss_adv", level)] = level_loss.detach()
        # Subclasses may add target terms to this backward (BDL: CE on pseudo labels).
        ctx.backward(loss_adv + self.target_loss(target, target_outputs, scalars))

        # 3. Discriminators: detached source maps -> 0, target maps -> 1, each term halved.
        for level, discriminator in self.discriminators.items():
            losses = train_discriminator(
                discriminator, source_maps[level], target_maps[level], ctx, self.config.gan
            )
            scalars.update({_scalar_name(key, level): value for key, value in losses.items()})
        return scalars


def _scalar_name(key: str, level: str) -> str:
    return key if level == "main" else f"{key}_{level}"


@dataclass
class AdaptSegNetFeatureConfig:
    name: str = "adaptsegnet_feature"
    lambda_seg_aux: float = 0.1  # λ_seg: aux-head (layer3) CE weight, multi-level models only
    lambda_adv: float = 0.001  # λ_adv of the layer4-feature discriminator (see the card)
    gan: Literal["vanilla", "lsgan"] = "vanilla"
    discriminator: Literal["pixel", "patch"] = "pixel"  # 1x1-conv MLP, or FCDiscriminator
    hidden_channels: int = 1024  # pixel: hidden width; patch: ndf is 64 regardless
    dropout: float = 0.5  # pixel: dropout after each hidden layer

    def validate(self) -> None:
        check_non_negative(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


@METHODS.register("adaptsegnet_feature")
class AdaptSegNetFeature(AdaptSegNet):
    """AdaptSegNet's three steps with one discriminator on the layer4 features [B, F, h, w].

    The features are not upsampled: the discriminator sees them at stride 8. The `patch`
    discriminator (FCDiscriminator, five stride-2 convs) needs feature maps of at least 32x32
    cells, i.e. images of at least 256x256; the default `pixel` one runs on any size.
    """

    Config = AdaptSegNetFeatureConfig

    def build_discriminators(self) -> dict[str, nn.Module]:
        channels = self.segmentor.feature_channels
        if self.config.discriminator == "patch":
            return {"main": FCDiscriminator(channels)}
        classifier = PixelDomainClassifier(
            channels, self.config.hidden_channels, self.config.dropout
        )
        return {"main": classifier}

    def adversarial_weights(self) -> dict[str, float]:
        return {"main": self.config.lambda_adv}

    def discriminator_inputs(
        self, outputs: dict[str, torch.Tensor], image_size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return {"main": outputs["features"]}

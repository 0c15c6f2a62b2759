"""FDA (Yang & Soatto, CVPR 2020): train on source images given the target's Fourier amplitude.

One step, as YanchaoYang/FDA:train.py (REFERENCE §3.5):
1. each source image takes the low-frequency amplitude of the target image at the same batch
   position (`udaseg.translation.fda_source_to_target`, window half-size
   b = floor(min(H, W) x beta)), on the raw 0..255 pixels: the segmentor normalises its own input
   afterwards, which is the order the released code insists on;
2. cross-entropy of the translated source images (+ lambda_seg_aux x the aux head's, multi-level
   models only), backpropagated;
3. the target images, untranslated, through the segmentor in train mode (the original forwards
   them every step, so target batches update the BN statistics from the start); for steps after
   `entropy_after_step`, lambda_ent x FDA's Charbonnier-penalised entropy of the main head's
   softmax at output resolution (`losses.entropy.charbonnier_entropy_loss`), backpropagated.

`self_training: true` is FDA's self-supervised round (SStrain.py): the target images carry
pseudo labels (`data.target.pseudo_labels`, from the mean softmax of the three beta models,
66th percentile per class capped at 0.9: recipes/fda_mbt_gta5_cityscapes.yaml), and step 3 adds
lambda_target x their cross-entropy (255 ignored) to the entropy term, in one backward. SStrain
applies the entropy from the first step, so its configs set `entropy_after_step: -1`.

Source and target batches must hold images of one size, as the original's 1024x512 crops; when
they do not (e.g. a config without a source crop), the target images are resized (bilinear) to
the source size before their amplitude is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from udaseg.errors import ConfigError
from udaseg.losses.entropy import charbonnier_entropy_loss, entropy_loss
from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.base import (
    Method,
    SetupContext,
    StepContext,
    check_non_negative,
    require_pseudo_labels,
)
from udaseg.registry import METHODS
from udaseg.translation import FDA_WINDOWS, fda_source_to_target


@dataclass
class FDAConfig:
    name: str = "fda"
    beta: float = 0.01  # β (`--LB`): 0.01, 0.05 or 0.09, one model each (MBT averages them)
    window: Literal["corners", "centered"] = "corners"  # training code's, or numpy helper's
    lambda_seg_aux: float = 0.1  # aux-head (layer3) CE weight, multi-level models only
    lambda_ent: float = 0.005  # `--entW`: weight of the robust target entropy
    eta: float = 2.0  # `--ita`: Charbonnier exponent, (entropy^2 + epsilon)^eta
    charbonnier_epsilon: float = 1e-8  # added to entropy^2 in model/deeplab.py
    # `--switch2entropy`: the entropy term counts for steps > this (train.py `i > switch2entropy`,
    # default 50000 of 100000; the README's example uses 0). -1: from the first step (SStrain.py).
    entropy_after_step: int = 50000
    self_training: bool = False  # SStrain.py's round: + CE on data.target.pseudo_labels
    lambda_target: float = 1.0  # weight of that pseudo-label CE (1 in SStrain.py)

    def validate(self) -> None:
        check_non_negative(self)
        if not 0.0 <= self.beta <= 0.5:
            raise ConfigError(f"beta: must be in [0, 0.5], got {self.beta}")
        if self.window not in FDA_WINDOWS:
            raise ConfigError(f"window: must be one of {', '.join(FDA_WINDOWS)}")
        if self.eta <= 0:
            raise ConfigError(f"eta: must be > 0, got {self.eta}")
        if self.charbonnier_epsilon < 0:
            raise ConfigError(f"charbonnier_epsilon: must be >= 0, got {self.charbonnier_epsilon}")
        if self.entropy_after_step < -1:
            raise ConfigError(
                f"entropy_after_step: must be >= -1 (-1: from the first step), got "
                f"{self.entropy_after_step}"
            )


@METHODS.register("fda")
class FDA(Method):
    Config = FDAConfig

    def setup(self, ctx: SetupContext) -> None:
        if self.config.self_training:
            require_pseudo_labels(
                ctx,
                "fda",
                "with self_training: true trains on pseudo labels; write them with "
                "`udaseg pseudo-label`",
            )

    @torch.no_grad()
    def translate(self, source_images: torch.Tensor, target_images: torch.Tensor) -> torch.Tensor:
        """Source images with the amplitude of the target images at the same batch positions.

        Args:
            source_images: float [B, 3, H, W] in 0..255.
            target_images: float [B', 3, H', W'] in 0..255; image i % B' goes with source i,
                resized (bilinear) to (H, W) when the sizes differ.
        Returns:
            float32 [B, 3, H, W], not clamped.
        """
        size = tuple(source_images.shape[-2:])
        if tuple(target_images.shape[-2:]) != size:
            target_images = F.interpolate(
                target_images.float(), size=size, mode="bilinear", align_corners=False
            )
        positions = torch.arange(source_images.shape[0], device=target_images.device)
        partners = target_images[positions % target_images.shape[0]]
        return fda_source_to_target(source_images, partners, self.config.beta, self.config.window)

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        source, target = batch["source"], batch["target"]

        # 1-2. Cross-entropy on the source images in the target's style.
        translated = self.translate(source["image"], target["image"])
        outputs = self.segmentor(translated)
        loss, scalars = source_segmentation_loss(outputs, source["label"], config.lambda_seg_aux)
        ctx.backward(loss)
        del outputs, loss

        # 3. Target terms; the forward happens even while they are off (BN statistics).
        entropy_on = ctx.step > config.entropy_after_step
        needs_graph = (entropy_on and config.lambda_ent > 0) or config.self_training
        with torch.set_grad_enabled(needs_graph):
            target_outputs = self.segmentor(target["image"])
            # FDA's entropy is taken at output resolution, before any upsampling.
            probabilities = torch.softmax(target_outputs["logits"].float(), dim=1)
            loss_ent = charbonnier_entropy_loss(
                probabilities, config.eta, config.charbonnier_epsilon
            )
        scalars["loss_ent"] = loss_ent.detach()
        # Diagnostic: the plain normalised entropy (MinEnt's), comparable across methods.
        scalars["entropy_target"] = entropy_loss(probabilities.detach())
        if needs_graph:
            loss = config.lambda_ent * loss_ent if entropy_on else 0.0
            if config.self_training:
                loss_pseudo, pseudo_scalars = source_segmentation_loss(
                    target_outputs, target["pseudo_label"], config.lambda_seg_aux
                )
                loss = loss + config.lambda_target * loss_pseudo
                scalars.update({f"{key}_target": value for key, value in pseudo_scalars.items()})
            ctx.backward(loss)
        if ctx.wants_visuals:
            scalars["visuals"] = self.visuals(source["image"], translated, target["image"])
        return scalars

    @torch.no_grad()
    def visuals(
        self, source_images: torch.Tensor, translated: torch.Tensor, target_images: torch.Tensor
    ) -> dict[str, Any]:
        """The first source image, its translation (clamped for display) and its target partner."""

        def picture(images: torch.Tensor) -> Any:
            return images[0].permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy()

        return {
            "source/image": picture(source_images),
            "source/translated": picture(translated),
            "target/image": picture(target_images),
        }

"""Self-training on offline pseudo labels: source cross-entropy plus target cross-entropy.

The plainest use of pseudo labels (the inner step of BDL's and FDA's self-supervised rounds,
CBST's retraining without its class balancing): a model is trained on the labelled source and on
target images labelled by an earlier model with `udaseg pseudo-label`. Pixels the policy left out
(255) are ignored. With a multi-level model the aux head is trained on both, weighted by
lambda_seg_aux, as on source.

The pseudo labels reach the method as `batch["target"]["pseudo_label"]` (int64 [B, H, W]),
augmented with the target image; `data.target.pseudo_labels` names their folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.base import (
    Method,
    SetupContext,
    StepContext,
    check_non_negative,
    require_pseudo_labels,
)
from udaseg.registry import METHODS


@dataclass
class SelfTrainingConfig:
    name: str = "self_training"
    lambda_seg_aux: float = 0.1  # aux-head (layer3) CE weight on both domains, multi-level only
    lambda_target: float = 1.0  # weight of the target CE on pseudo labels (BDL, FDA: 1)

    def validate(self) -> None:
        check_non_negative(self)


@METHODS.register("self_training")
class SelfTraining(Method):
    Config = SelfTrainingConfig

    def setup(self, ctx: SetupContext) -> None:
        require_pseudo_labels(
            ctx, "self_training", "trains on pseudo labels; write them with `udaseg pseudo-label`"
        )

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source, target = batch["source"], batch["target"]
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(
            outputs, source["label"], self.config.lambda_seg_aux
        )
        ctx.backward(loss)
        del outputs, loss

        target_outputs = self.segmentor(target["image"])
        loss_target, target_scalars = source_segmentation_loss(
            target_outputs, target["pseudo_label"], self.config.lambda_seg_aux
        )
        ctx.backward(self.config.lambda_target * loss_target)
        scalars.update({f"{key}_target": value for key, value in target_scalars.items()})
        if ctx.wants_visuals:
            scalars["visuals"] = self.visuals(target, target_outputs["logits"])
        return scalars

    @torch.no_grad()
    def visuals(self, target: dict[str, Any], logits: torch.Tensor) -> dict[str, Any]:
        """The first target image, its pseudo label and the prediction, as uint8 [H, W, 3]."""
        size = tuple(target["image"].shape[-2:])
        prediction = torch.nn.functional.interpolate(
            logits[:1].float(), size=size, mode="bilinear", align_corners=True
        ).argmax(1)[0]
        palette = self.label_space.colorize
        return {
            "target/image": target["image"][0].permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy(),
            "target/pseudo_label": palette(target["pseudo_label"][0].cpu().numpy()),
            "target/prediction": palette(prediction.cpu().numpy()),
        }

"""BDL's segmentation model M (Li, Yuan, Vasconcelos, CVPR 2019): AdaptSegNet on translated source
images, plus cross-entropy on target pseudo labels from the second pass on.

M trains on F(S), the source set translated by BDL's F (`udaseg translate --generator`, pointed
at by `data.source.root`), with its source labels, and aligns its output space adversarially
with the target's (λ_adv 0.001, single level in the paper; AdaptSegNet's discriminator and
steps, REFERENCE §3.3). When the target set carries pseudo labels (`data.target.pseudo_labels`,
written by `udaseg pseudo-label --policy class_percentile --percentile 50 --cap 0.9`: BDL's
per-class median capped at 0.9), the target term is λ_adv L_adv + L_seg(pseudo), one backward,
as liyunsheng13/BDL BDL.py computes `loss_trg`; without them M is AdaptSegNet (Eq. 1 of the
paper, the rounds M_0^(k) of Algorithm 1). Which pass of Algorithm 1 a run is, is the recipe's
business (udaseg/configs/recipes/toy_bdl.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.adaptsegnet import AdaptSegNet, AdaptSegNetConfig
from udaseg.registry import METHODS


@dataclass
class BDLConfig(AdaptSegNetConfig):
    name: str = "bdl"
    # BDL trains a single-level DeepLab (REFERENCE §3.3); these apply to multi-level models only.
    lambda_seg_aux: float = 0.1
    lambda_adv_main: float = 0.001  # λ_adv (`--lambda-adv-target`)
    lambda_target: float = 1.0  # weight of the pseudo-label CE (1 in Eq. 3 and in the code)


@METHODS.register("bdl")
class BDL(AdaptSegNet):
    Config = BDLConfig

    def target_loss(
        self, target: dict[str, Any], outputs: dict[str, torch.Tensor], scalars: dict[str, Any]
    ) -> torch.Tensor | float:
        """λ_target x CE of the target logits on the pseudo labels (255 ignored), if any.

        Args:
            target: the target batch; "pseudo_label" int64 [B, H, W] when configured.
            outputs: the segmentor's outputs for target["image"].
        """
        if "pseudo_label" not in target:
            return 0.0
        loss, target_scalars = source_segmentation_loss(
            outputs, target["pseudo_label"], self.config.lambda_seg_aux
        )
        scalars.update({f"{key}_target": value for key, value in target_scalars.items()})
        return self.config.lambda_target * loss

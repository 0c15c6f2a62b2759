"""Source-only training: the lower bound every UDA method is compared with.

The segmentor learns from labelled source images alone. With a multi-level DeepLabV2 the
auxiliary head on layer3 is trained too, weighted by lambda_seg_aux (AdaptSegNet's lambda_seg 0.1).
Pointed at labelled target images (`data.source` = the target train split), the same method
trains the target oracle, the ceiling of the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.base import Method, StepContext
from udaseg.registry import METHODS


@dataclass
class SourceOnlyConfig:
    name: str = "source_only"
    lambda_seg_aux: float = (
        0.1  # λ_seg: weight of the aux-head (layer3) loss when the model is multi-level
    )


@METHODS.register("source_only")
class SourceOnly(Method):
    Config = SourceOnlyConfig
    uses_target = False

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source = batch["source"]
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(
            outputs, source["label"], self.config.lambda_seg_aux
        )
        ctx.backward(loss)
        return scalars

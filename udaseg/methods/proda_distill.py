"""ProDA stages 2 and 3 (Zhang et al., CVPR 2021): self-distillation into a fresh student.

One step, as microsoft/ProDA models/adaptation_modelv2.py `step_distillation` with the README's
stage-2/3 flags (`--S_pseudo 1 --threshold 0.95 --distillation 1`, REFERENCE §3.6):
1. source: cross-entropy on the labelled source batch, backpropagated;
2. target: the student on the strong view of the weak crop (RandAugment photometric ops +
   cutout, `methods/proda.py` `strong_view`) against the previous stage's hard pseudo labels
   (offline: `udaseg pseudo-label` with flip and the `threshold` policy at 0.95; cutout pixels
   ignored), plus lambda_distillation x the KL to the frozen previous-stage model (`teacher`,
   set with `init.teacher: <stage checkpoint>#segmentor`) on the same strong view.
All target terms at 1/`loss_stride` of the crop, as in stage 1.

The student starts fresh: in the paper from SimCLRv2 ResNet-101 (`model.init: r101_1x_sk0.pth`,
models/weights.py), and the teacher is the previous stage's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from udaseg.errors import ConfigError
from udaseg.losses.proda import distillation_kl, symmetric_cross_entropy
from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.base import (
    Method,
    SetupContext,
    StepContext,
    check_non_negative,
    require_pseudo_labels,
)
from udaseg.methods.proda import StrongViewOptions, _resize, _resize_labels, strong_view
from udaseg.methods.teachers import frozen_copy
from udaseg.registry import METHODS


@dataclass
class ProDADistillConfig(StrongViewOptions):
    name: str = "proda_distill"
    lambda_seg_aux: float = 0.1  # aux-head CE weight on source, multi-level models only
    lambda_distillation: float = 1.0  # --distillation: weight of the KL to the teacher
    # "paper": KL(p_teacher || p_student) per pixel; "fixed": the code with log_softmax (mean
    # over pixel-class entries = paper / C); "released": the code as released, softmax where
    # F.kl_div wants log-probabilities (REFERENCE §7.7, microsoft/ProDA#20, #43).
    distillation_kl: Literal["paper", "fixed", "released"] = "paper"
    sce_alpha: float = 1.0  # target CE weight (stages 2-3 run without --rce)
    sce_beta: float = 0.0  # reverse-CE weight (--rce adds it with 0.1 / 1.0)
    strong_view: bool = True  # --S_pseudo 1: train on the strong view (False: the weak view)
    # --ema_bn: whether the teacher carries the extra layer4 BatchNorm (`model.layer4_output_bn`,
    # --bn_clr). ProDA's stage-2 teacher (the stage-1 model) has none, its stage-3 teacher (a
    # --bn_clr stage-2 student) has one. None: as the student.
    teacher_layer4_output_bn: bool | None = None

    def validate(self) -> None:
        check_non_negative(self, "lambda_seg_aux", "lambda_distillation", "sce_alpha", "sce_beta")
        self.validate_strong_view()


@METHODS.register("proda_distill")
class ProDADistill(Method):
    Config = ProDADistillConfig

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        # Replaced by the previous stage's weights through `init.teacher` on a fresh start.
        self.teacher = frozen_copy(segmentor)
        wanted = config.teacher_layer4_output_bn
        if wanted is not None and wanted != (getattr(segmentor, "bn_pretrain", None) is not None):
            if not hasattr(self.teacher, "set_layer4_output_bn"):
                raise ConfigError(
                    "method.teacher_layer4_output_bn: only model.name=deeplabv2 has the extra "
                    "layer4 BatchNorm; leave it unset"
                )
            self.teacher.set_layer4_output_bn(wanted)
            self.teacher.requires_grad_(False)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def setup(self, ctx: SetupContext) -> None:
        require_pseudo_labels(
            ctx,
            "proda_distill",
            "trains on the previous stage's hard pseudo labels; write them with "
            "`udaseg pseudo-label --policy threshold`",
        )

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source, target = batch["source"], batch["target"]
        config = self.config
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(outputs, source["label"], config.lambda_seg_aux)
        ctx.backward(loss)
        del outputs, loss

        images = target["image"]
        labels = target["pseudo_label"]
        if config.strong_view:
            images, cut = strong_view(
                images,
                config.strong_num_ops,
                config.strong_magnitude,
                config.cutout_fraction,
                config.cutout_fill,
            )
            labels = labels.masked_fill(cut, self.label_space.ignore_index)
        height, width = images.shape[-2:]
        size = (max(1, height // config.loss_stride), max(1, width // config.loss_stride))
        labels = _resize_labels(labels, size)
        student_logits = _resize(self.segmentor(images)["logits"], size)
        loss_target, cross_entropy, reverse = symmetric_cross_entropy(
            student_logits, labels, config.sce_alpha, config.sce_beta
        )
        if config.lambda_distillation > 0:
            with torch.no_grad():
                teacher_logits = _resize(self.teacher(images)["logits"].float(), size)
            distillation = distillation_kl(student_logits, teacher_logits, config.distillation_kl)
            loss_target = loss_target + config.lambda_distillation * distillation
            scalars["loss_distillation"] = distillation.detach()
        ctx.backward(loss_target)
        scalars.update(loss_ce_target=cross_entropy.detach(), loss_rce_target=reverse.detach())
        return scalars

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmentor(images)["logits"]

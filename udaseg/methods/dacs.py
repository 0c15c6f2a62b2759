"""DACS (Tranheden et al., WACV 2021): ClassMix of source classes onto target images, labelled by
an EMA teacher.

One step, in the order of vikolss/DACS trainUDA.py (REFERENCE §3.7):
1. source: cross-entropy of the student on the labelled source batch (logits upsampled bilinearly,
   align_corners=True, to the input size), backpropagated;
2. the EMA teacher labels the target batch: softmax of its upsampled logits, argmax = pseudo
   label, and one weight for the whole batch = the fraction of its pixels whose max probability
   is >= 0.968 (`pseudo_weight: threshold_uniform`);
3. ClassMix: for each pair (source i, target i), half of the classes present in the source label
   (void included, as the code) are pasted onto the target image; the mixed label takes the
   source label there and the pseudo label elsewhere, the pixel weight 1 there and the batch
   weight elsewhere; the mixed images get colour jitter (p 0.8) and Gaussian blur (p 0.5);
4. mixed: the student's pixel-weighted cross-entropy on the mixed images, averaged over ALL
   pixels (void pixels count in the denominator with a zero loss, as CrossEntropyLoss2dPixel-
   WiseWeighted's mean does), weighted by lambda_mixed and backpropagated;
5. after the optimizer step, teacher <- alpha x teacher + (1 - alpha) x student on parameters,
   alpha = min(1 - 1 / (step + 1), 0.99).

The teacher forwards in train mode by default (`teacher_bn: batch`): the code calls
`ema_model.train()` once and never `eval()`, so the teacher's batch norm uses the statistics of
the target batch it labels, and its own running statistics (never averaged from the student)
follow its forwards. A multi-level model trains its aux head on both terms, weighted by
lambda_seg_aux (DACS's DeepLabV2 has one head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from udaseg import augment
from udaseg.augment import class_mix_masks, dacs_strong_transform, mix
from udaseg.data.label_spaces import IGNORE_INDEX
from udaseg.errors import ConfigError
from udaseg.losses.segmentation import (
    source_segmentation_loss,
    upsample_logits,
    upsampled_softmax,
)
from udaseg.methods.base import Method, SetupContext, StepContext, check_non_negative
from udaseg.methods.teachers import ema_update, frozen_copy
from udaseg.registry import METHODS


@dataclass
class DACSConfig:
    name: str = "dacs"
    lambda_seg_aux: float = 0.1  # aux-head (layer3) CE weight on both terms, multi-level only
    lambda_mixed: float = 1.0  # consistency_weight: weight of the mixed-image CE
    ema_alpha: float = 0.99  # alpha_teacher; ramped as min(1 - 1 / (step + 1), ema_alpha)
    confidence_threshold: float = 0.968  # the pseudo-label weight's confidence threshold
    # pixel_weight of the code: "threshold_uniform" = one weight per batch, the fraction of
    # pixels >= threshold (default); "threshold" = per pixel, 1 if >= threshold else 0; "none".
    pseudo_weight: Literal["threshold_uniform", "threshold", "none"] = "threshold_uniform"
    # "batch": the teacher forwards in train mode, its BN normalises with the target batch's
    # statistics and EMA touches parameters only (the code); "running": eval mode, running
    # statistics averaged from the student like parameters.
    teacher_bn: Literal["batch", "running"] = "batch"
    color_jitter: bool = True  # colour jitter (strength 0.25, p 0.8) on the mixed images
    blur: bool = True  # Gaussian blur (sigma 0.15-1.15, p 0.5) on the mixed images
    jitter_strength: float = 0.25  # DACS 0.25 (DAFormer 0.2)

    def validate(self) -> None:
        check_non_negative(self)
        for name in ("ema_alpha", "confidence_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {value}")
        if not 0.0 <= self.jitter_strength <= 0.5:
            raise ConfigError(f"jitter_strength: must be in [0, 0.5], got {self.jitter_strength}")


def pseudo_label_weights(
    probabilities: torch.Tensor,
    threshold: float,
    policy: Literal["threshold_uniform", "threshold", "none"] = "threshold_uniform",
) -> torch.Tensor:
    """The weight of each target pixel's pseudo label.

    Args:
        probabilities: float [B, C, H, W] teacher softmax.
        threshold: confidence threshold (DACS: 0.968).
        policy: "threshold_uniform": every pixel of the batch gets the fraction of the batch's
            pixels whose max probability is >= threshold (one number for the whole batch, as
            the code's `torch.sum(max_probs.ge(0.968)) / np.size(targets_u)`); "threshold":
            1 where >= threshold, else 0; "none": 1 everywhere.
    Returns:
        float32 [B, H, W].
    """
    confidence = probabilities.max(dim=1).values
    confident = (confidence >= threshold).float()
    if policy == "threshold_uniform":
        return torch.full_like(confident, float(confident.mean()))
    if policy == "threshold":
        return confident
    if policy == "none":
        return torch.ones_like(confident)
    raise ConfigError(f"pseudo_weight: unknown policy {policy!r}")


def pixel_weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """DACS's CrossEntropyLoss2dPixelWiseWeighted: mean over all pixels of weight x CE.

    Args:
        logits: [B, C, h, w], upsampled (bilinear, align_corners=True) to the labels' size.
        labels: int64 [B, H, W], `ignore_index` where void (those pixels add 0 to the sum but
            still count in the mean's denominator, as the code's torch.mean does).
        weights: float [B, H, W] per-pixel weights.
    Returns:
        scalar float32.
    """
    logits = upsample_logits(logits, tuple(labels.shape[-2:]))
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return (per_pixel * weights).mean()


def common_crop(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Crop a source and a target batch to their common size, at random offsets.

    DACS mixes 512x512 crops of both domains. When `data.source.crop` and `data.target.crop`
    differ (or a domain is not cropped), each batch is cropped to (min H, min W) with one offset
    per batch drawn from torch's global generator (which the engine reseeds every step).

    Args:
        source: {"image": [B, 3, Hs, Ws], "label": [B, Hs, Ws]}.
        target: {"image": [B, 3, Ht, Wt]}.
    Returns:
        the two dicts with image/label tensors of spatial size (min(Hs, Ht), min(Ws, Wt)).
    """
    height = min(source["image"].shape[-2], target["image"].shape[-2])
    width = min(source["image"].shape[-1], target["image"].shape[-1])

    def crop(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        full_height, full_width = batch["image"].shape[-2:]
        if (full_height, full_width) == (height, width):
            return batch
        top = int(torch.randint(0, full_height - height + 1, ()))
        left = int(torch.randint(0, full_width - width + 1, ()))
        return {
            key: value[..., top : top + height, left : left + width]
            for key, value in batch.items()
            if key in ("image", "label")
        }

    return crop(source), crop(target)


@METHODS.register("dacs")
class DACS(Method):
    Config = DACSConfig

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.teacher = frozen_copy(segmentor)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def setup(self, ctx: SetupContext) -> None:
        # The teacher starts as the student after its init weights were loaded (a resumed run
        # restored both from the checkpoint).
        if not ctx.resumed:
            self.teacher.load_state_dict(self.segmentor.state_dict())

    @torch.no_grad()
    def teacher_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [B, C, H, W] teacher softmax at the image size, without a graph."""
        self.teacher.train(self.config.teacher_bn == "batch")
        try:
            logits = self.teacher(images)["logits"]
        finally:
            self.teacher.eval()
        return upsampled_softmax(logits, tuple(images.shape[-2:]))

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        source, target = batch["source"], batch["target"]
        if source["image"].shape[0] != target["image"].shape[0]:
            raise ConfigError("data.batch_size: DACS pairs each source image with a target image")

        # 1. Segmentation on the labelled source images.
        source_outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(
            source_outputs, source["label"], config.lambda_seg_aux
        )
        ctx.backward(loss)
        del source_outputs, loss

        # 2. Pseudo labels and their weights from the EMA teacher, on the (cropped) target.
        mixed_source, mixed_target = common_crop(source, target)
        probabilities = self.teacher_probabilities(mixed_target["image"])
        pseudo_labels = probabilities.argmax(dim=1)
        weights = pseudo_label_weights(
            probabilities, config.confidence_threshold, config.pseudo_weight
        )
        del probabilities

        # 3. ClassMix: half of each source image's classes over its target image, then the
        # strong photometric augmentation of the mixed images only.
        masks = class_mix_masks(mixed_source["label"])
        images = mix(masks, mixed_source["image"].float(), mixed_target["image"].float())
        labels = mix(masks, mixed_source["label"], pseudo_labels)
        pixel_weights = mix(masks, torch.ones_like(weights), weights)
        images = self.strong_transform(images)

        # 4. The student's weighted CE on the mixed images.
        outputs = self.segmentor(images)
        loss_mixed = pixel_weighted_cross_entropy(outputs["logits"], labels, pixel_weights)
        total = loss_mixed
        scalars["loss_mixed"] = loss_mixed.detach()
        if "aux_logits" in outputs:
            loss_aux = pixel_weighted_cross_entropy(outputs["aux_logits"], labels, pixel_weights)
            total = total + config.lambda_seg_aux * loss_aux
            scalars["loss_mixed_aux"] = loss_aux.detach()
        ctx.backward(config.lambda_mixed * total)
        scalars["pseudo_weight"] = weights.mean().detach()
        if ctx.wants_visuals:
            scalars["visuals"] = self.visuals(images, labels, outputs["logits"])
        return scalars

    def strong_transform(self, images: torch.Tensor) -> torch.Tensor:
        """Colour jitter then blur (augment.dacs_strong_transform), or the enabled one alone."""
        config = self.config
        if config.color_jitter and config.blur:
            return dacs_strong_transform(images, jitter_strength=config.jitter_strength)
        if not (config.color_jitter or config.blur):
            return images
        if config.color_jitter:
            strength = config.jitter_strength
            return augment.color_jitter(
                images,
                strength,
                strength,
                strength,
                strength,
                augment.DACS_JITTER_PROBABILITY,
                formulas="kornia_legacy",
                random_order=True,
            )
        return augment.gaussian_blur(
            images, augment.DACS_BLUR_SIGMA_RANGE, augment.DACS_BLUR_PROBABILITY
        )

    def after_optimizer_step(self, ctx: StepContext) -> None:
        # The code's ramp: the "true" average of the students so far until it exceeds alpha.
        alpha = min(1.0 - 1.0 / (ctx.step + 1), self.config.ema_alpha)
        buffers = "keep" if self.config.teacher_bn == "batch" else "ema"
        ema_update(self.teacher, self.segmentor, alpha, buffers=buffers)

    @torch.no_grad()
    def visuals(
        self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, Any]:
        """The first mixed image, its mixed label and the prediction, as uint8 [H, W, 3]."""
        size = tuple(images.shape[-2:])
        prediction = upsample_logits(logits[:1].float(), size).argmax(1)[0]
        palette = self.label_space.colorize
        return {
            "mixed/image": images[0].permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy(),
            "mixed/label": palette(labels[0].cpu().numpy()),
            "mixed/prediction": palette(prediction.cpu().numpy()),
        }

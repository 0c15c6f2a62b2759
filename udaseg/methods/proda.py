"""ProDA stage 1 (Zhang et al., CVPR 2021): prototype-rectified self-training with structure learning.

One step, as microsoft/ProDA models/adaptation_modelv2.py `step` (REFERENCE §3.6), on a warm-up
model (AdaptSegNet with LS-GAN, adv weight 0.01: `adaptsegnet` with `gan: lsgan`):
1. source: cross-entropy on the labelled source batch, backpropagated;
2. pseudo labels: the warm-up model's soft prediction p_t0 (offline, `udaseg pseudo-label
   --save-soft`, read with `data.target.soft_pseudo_labels`), cropped and flipped with the weak
   view, rectified per pixel by omega = softmax(-||f - eta_k|| / tau) of the EMA teacher's
   features on the weak view: y^ = argmax_k(omega_k p_t0,k) (`rectify: false`: argmax p_t0);
3. the student on the weak view: symmetric cross-entropy alpha CE + beta RCE on y^, plus the
   MRKLD regulariser (GTA: 0.1);
4. structure learning: the KL between the EMA weak view's prototype assignment and the student's
   on the strong view (RandAugment photometric ops + cutout of the weak view), weight 10;
5. the prototypes move toward the EMA's per-image class means (momentum 1e-4), and the EMA
   follows the student (alpha 0.999, buffers copied).
All target terms are computed at 1/`loss_stride` of the crop (ProDA: 1/4), logits and features
upsampled bilinearly (align_corners=True) to it.

The prototypes (class centroids of the warm-up model's target features) are computed in `setup`
over the target training set, summed over ranks, and checkpointed as method state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from udaseg.augment import cutout, randaugment_photometric
from udaseg.errors import ConfigError
from udaseg.losses.proda import (
    class_mean_features,
    momentum_update,
    mrkld_regularizer,
    prototype_distances,
    prototype_weights,
    rectified_pseudo_labels,
    structure_consistency_kl,
    symmetric_cross_entropy,
)
from udaseg.losses.segmentation import source_segmentation_loss
from udaseg.methods.base import Method, SetupContext, StepContext, check_non_negative
from udaseg.methods.teachers import ema_update, frozen_copy
from udaseg.registry import METHODS


@dataclass
class StrongViewOptions:
    """The target-loss stride and strong view that every ProDA stage shares (base of its configs)."""

    loss_stride: int = 4  # target losses at 1/loss_stride of the crop (ProDA: 1/4)
    strong_num_ops: int = 2  # RandAugmentMC(2, 10)
    strong_magnitude: int = 10
    cutout_fraction: float = 1.0 / 3.0  # CutoutAbs side = min(H, W) x this (ProDA: // 3)
    cutout_fill: float = 127.0  # grey, as ProDA's CutoutAbs

    def validate_strong_view(self) -> None:
        if self.loss_stride < 1:
            raise ConfigError(f"loss_stride: must be >= 1, got {self.loss_stride}")
        if not 0.0 < self.cutout_fraction <= 1.0:
            raise ConfigError(f"cutout_fraction: must be in (0, 1], got {self.cutout_fraction}")
        if self.strong_magnitude < 2:
            raise ConfigError(f"strong_magnitude: must be >= 2, got {self.strong_magnitude}")


@dataclass
class ProDAConfig(StrongViewOptions):
    name: str = "proda"
    lambda_seg_aux: float = 0.1  # aux-head CE weight on source, multi-level models only
    rectify: bool = True  # --proto_rectify: prototype weights on p_t0 (False: argmax p_t0)
    rectify_threshold: float = 0.0  # --train_thred: normalised rectified confidence floor
    sce_alpha: float = 0.1  # --rce_alpha: CE weight (1.0 with sce_beta 0 = plain CE)
    sce_beta: float = 1.0  # --rce_beta: reverse-CE weight
    lambda_structure: float = 10.0  # --proto_consistW (0 skips the strong view entirely)
    structure_reduction: Literal["released", "per_pixel"] = "released"  # see losses/proda.py
    lambda_regularizer: float = 0.1  # --regular_w (MRKLD): 0.1 for GTA5, 0 for SYNTHIA
    temperature: float = 1.0  # tau (--proto_temperature)
    ema_alpha: float = 0.999  # EMA teacher, parameters; buffers are copied from the student
    moving_prototypes: bool = True  # --moving_prototype
    prototype_momentum: float = 1.0e-4  # --proto_momentum
    # Initial prototypes: "pixel_mean" = the paper's Eq. (mean over every target pixel predicted
    # as k); "image_mean" = calc_prototype.py's mean of per-image class means.
    prototype_init: Literal["pixel_mean", "image_mean"] = "pixel_mean"
    minimum_pixels: int = 10  # a class needs this many pixels in an image for its image mean

    def validate(self) -> None:
        check_non_negative(self, "lambda_seg_aux", "sce_alpha", "sce_beta", "lambda_structure")
        check_non_negative(self, "lambda_regularizer", "prototype_momentum")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if not 0.0 <= self.ema_alpha <= 1.0:
            raise ConfigError(f"ema_alpha: must be in [0, 1], got {self.ema_alpha}")
        self.validate_strong_view()


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True (ProDA's every interpolation): [B, K, h, w] -> [B, K, *size]."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest: int64 [B, H, W] -> [B, *size]."""
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def strong_view(
    images: torch.Tensor,
    num_ops: int = 2,
    magnitude: int = 10,
    cutout_fraction: float = 1.0 / 3.0,
    cutout_fill: float = 127.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProDA's strong view of the weak one: RandAugment photometric ops, then a grey cutout.

    Draws from torch's global generator, which the engine reseeds every step.

    Args:
        images: float [B, 3, H, W] RGB 0..255 (the weak view).
        num_ops, magnitude: RandAugment's (ProDA: 2, 10).
        cutout_fraction: cutout side = int(min(H, W) x this) (ProDA: min(H, W) // 3).
        cutout_fill: cutout grey level (ProDA: 127).
    Returns:
        (strong images float [B, 3, H, W], cut bool [B, H, W]: pixels inside the cutout).
    """
    strong = randaugment_photometric(images, num_ops, magnitude)
    side = max(1, int(min(images.shape[-2:]) * cutout_fraction))
    marks = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
    strong, marks = cutout(
        strong, side, 1.0, marks.to(images.device), fill_value=cutout_fill, ignore_index=1
    )
    assert marks is not None
    return strong, marks.bool()


@METHODS.register("proda")
class ProDA(Method):
    Config = ProDAConfig

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.ema = frozen_copy(segmentor)
        # Zeros until `setup` computes the centroids (or a checkpoint restores them).
        self.prototypes = torch.zeros(segmentor.num_classes, segmentor.feature_channels)
        self.all_gather = lambda tensor: tensor.unsqueeze(0)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"ema": self.ema}

    def extra_state(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.prototypes = state["prototypes"].clone().float()

    # --- setup -----------------------------------------------------------------------------

    def setup(self, ctx: SetupContext) -> None:
        self.all_gather = ctx.all_gather
        target = ctx.datasets.get("target")
        if target is None:
            return
        config = getattr(target, "config", None)
        if (
            getattr(config, "soft_pseudo_labels", None) is None
            and getattr(config, "pseudo_labels", None) is None
        ):
            raise ConfigError(
                "config key data.target.soft_pseudo_labels: method proda trains on the warm-up "
                "model's soft predictions; write them with `udaseg pseudo-label --save-soft` "
                "and name that folder here"
            )
        self.prototypes = self.prototypes.to(ctx.device)
        if not ctx.resumed:
            # The EMA starts as the (warm-up) student, as ProDA copies BaseNet's state into it;
            # it was built before `init:` loaded those weights.
            self.ema.load_state_dict(self.segmentor.state_dict())
            self.prototypes = self.initial_prototypes(target, ctx)

    @torch.no_grad()
    def initial_prototypes(self, dataset: Any, ctx: SetupContext) -> torch.Tensor:
        """Class centroids of the segmentor's target features, over every rank's shard.

        Each sample is read as the training stream reads it with seed = its index (one
        augmented view per image). Pixels count for the class the segmentor predicts there.

        Returns:
            float32 [C, F] on ctx.device; a class never predicted keeps a zero prototype.
        """
        num_classes = self.segmentor.num_classes
        channels = self.segmentor.feature_channels
        sums = torch.zeros(num_classes, channels, device=ctx.device, dtype=torch.float64)
        counts = torch.zeros(num_classes, device=ctx.device, dtype=torch.float64)
        shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))
        loader = DataLoader(
            shard, batch_size=ctx.batch_size, num_workers=ctx.num_workers, shuffle=False
        )
        was_training = self.segmentor.training
        self.segmentor.eval()
        for batch in loader:
            outputs = self.segmentor(batch["image"].to(ctx.device).float())
            predictions = outputs["logits"].argmax(dim=1)
            if self.config.prototype_init == "pixel_mean":
                means, _ = class_mean_features(outputs["features"], predictions, num_classes, 1)
                pixel_counts = F.one_hot(predictions, num_classes).sum(dim=(1, 2)).double()
                sums += (means.double() * pixel_counts[..., None]).sum(dim=0)
                counts += pixel_counts.sum(dim=0)
            else:
                means, present = class_mean_features(
                    outputs["features"], predictions, num_classes, self.config.minimum_pixels
                )
                sums += means.double().sum(dim=0)
                counts += present.double().sum(dim=0)
        self.segmentor.train(was_training)
        ctx.all_reduce(sums)
        ctx.all_reduce(counts)
        return (sums / counts.clamp_min(1)[:, None]).float()

    # --- training --------------------------------------------------------------------------

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source, target = batch["source"], batch["target"]
        config = self.config
        outputs = self.segmentor(source["image"])
        loss, scalars = source_segmentation_loss(outputs, source["label"], config.lambda_seg_aux)
        ctx.backward(loss)
        del outputs, loss

        images = target["image"]
        height, width = images.shape[-2:]
        size = (max(1, height // config.loss_stride), max(1, width // config.loss_stride))
        prototypes = self.prototypes.to(images.device)
        with torch.no_grad():
            teacher = self.ema(images)
            teacher_features = _resize(teacher["features"].float(), size)
            teacher_logits = _resize(teacher["logits"].float(), size)
            labels = self.pseudo_labels(target, teacher_features, prototypes, size)

        student_logits = _resize(self.segmentor(images)["logits"], size)
        loss_sce, cross_entropy, reverse = symmetric_cross_entropy(
            student_logits, labels, config.sce_alpha, config.sce_beta
        )
        loss_target = loss_sce
        if config.lambda_regularizer > 0:
            regularizer = mrkld_regularizer(student_logits)
            loss_target = loss_target + config.lambda_regularizer * regularizer
            scalars["loss_regularizer"] = regularizer.detach()
        if config.lambda_structure > 0:
            structure = self.structure_loss(images, teacher_features, prototypes, size)
            loss_target = loss_target + config.lambda_structure * structure
            scalars["loss_structure"] = structure.detach()
        ctx.backward(loss_target)
        scalars.update(
            loss_sce=loss_sce.detach(),
            loss_ce_target=cross_entropy.detach(),
            loss_rce_target=reverse.detach(),
            pseudo_label_fraction=(labels != self.label_space.ignore_index).float().mean(),
        )
        if config.moving_prototypes:
            self.move_prototypes(teacher_features, teacher_logits)
        return scalars

    def pseudo_labels(
        self,
        target: dict[str, Any],
        teacher_features: torch.Tensor,
        prototypes: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """int64 [B, *size]: rectified soft pseudo labels, or the hard ones when no soft exist.

        Without `soft_pseudo_labels` (e.g. ProDA's own path without --proto_rectify, which
        reads hard labels), the dataset's `pseudo_label` is used as it is.
        """
        ignore_index = self.label_space.ignore_index
        soft = target.get("soft_pseudo_label")
        if soft is None:
            return _resize_labels(target["pseudo_label"], size)
        soft = _resize(soft.to(teacher_features.device).float(), size)
        if self.config.rectify:
            weights = prototype_weights(teacher_features, prototypes, self.config.temperature)
        else:
            weights = torch.ones_like(soft)
        return rectified_pseudo_labels(
            weights, soft, self.config.rectify_threshold, ignore_index=ignore_index
        )

    def strong_view(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        return strong_view(
            images,
            config.strong_num_ops,
            config.strong_magnitude,
            config.cutout_fraction,
            config.cutout_fill,
        )

    def structure_loss(
        self,
        images: torch.Tensor,
        teacher_features: torch.Tensor,
        prototypes: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """The structure KL between the EMA weak view and the student's strong view."""
        strong, cut = self.strong_view(images)
        student_features = _resize(self.segmentor(strong)["features"], size)
        valid = _resize_labels(cut.long(), size) == 0
        return structure_consistency_kl(
            prototype_distances(teacher_features, prototypes),
            prototype_distances(student_features, prototypes),
            valid,
            self.config.temperature,
            self.config.structure_reduction,
        )

    @torch.no_grad()
    def move_prototypes(self, teacher_features: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        """Momentum update from the EMA's per-image class means, every rank's images in order."""
        num_classes = self.segmentor.num_classes
        means, present = class_mean_features(
            teacher_features,
            teacher_logits.argmax(dim=1),
            num_classes,
            self.config.minimum_pixels,
        )
        # Gathered so that every rank applies the same updates and prototypes stay identical.
        means = self.all_gather(means.contiguous()).flatten(0, 1)
        present = self.all_gather(present.to(torch.uint8)).flatten(0, 1).bool()
        self.prototypes = momentum_update(
            self.prototypes.to(means.device), means, present, self.config.prototype_momentum
        )

    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.ema, self.segmentor, self.config.ema_alpha, buffers="copy")

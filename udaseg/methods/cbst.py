"""CBST's retraining step (Zou et al., ECCV 2018): one cross-entropy over source and pseudo-labelled
target pixels together, the source down-weighted to the code's source portion.

A CBST round (recipes/toy_cbst.yaml, recipes/cbst_gta5_cityscapes.yaml) labels the target train
split with the class-balanced policy (`udaseg pseudo-label --policy class_balanced --portion p`)
and retrains on it; this method is the retraining. It differs from `self_training` in how the two
domains are weighted. The official codes (yzou2/CRST crst_seg.py, yzou2/CBST solve_ST.py) train
on ONE shuffled set: a random `source_portion` of the source images (GTA: 3 %, + 0.25 % a round,
at most 6 %) concatenated with every pseudo-labelled target image, batches drawn from it, and the
loss is the mean cross-entropy over the valid pixels of the batch, whichever domain they come
from (REFERENCE §3.4). The engine draws one source and one target batch a step instead, so the
concatenation is replaced by its expectation: with n_s = floor(N_source x source_portion) source
images per N_target target images, each source image counts s = n_s / N_target times a target
image, and

    loss = (s x sum of source CE + sum of target CE) / (s x valid source pixels + valid target pixels).

Pixels labelled 255 (left out by the policy, or void) are ignored. source_portion = 0 trains on
the target alone. A multi-level model adds lambda_seg_aux x the same loss of its aux head.

Rare-class mining (option, off by default: it is in the codes, not in the paper). CRST's
GTA5StMineDataSet crops each target image so that, with probability `mine_chance` (0.8) and when
its pseudo label holds one of the "mine" classes, the crop is centred on a random pixel of one
of them (the class chosen uniformly among those present); otherwise the crop is uniform. Mine
classes are those predicted on less than `mine_portion` (1e-3) of the target pixels in the
round's pseudo-labelling (CRST kc_parameters; the MXNet code mines its 3 rarest classes, which
`mine_rarest: 3` selects instead). For this the target dataset gives whole images
(`data.target.crop: null`) and the method crops them to `crop`; the class counts come from the
pseudo-label folder's summary.json (`predicted_pixels`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from udaseg.data.label_spaces import IGNORE_INDEX
from udaseg.errors import ConfigError
from udaseg.losses.segmentation import upsample_logits
from udaseg.methods.base import SetupContext, StepContext, check_non_negative
from udaseg.methods.self_training import SelfTraining
from udaseg.registry import METHODS


@dataclass
class CBSTConfig:
    name: str = "cbst"
    lambda_seg_aux: float = 0.1  # aux-head (layer3) CE weight, multi-level only
    # Fraction of the source images in the round's training set (CRST/CBST GTA: 0.03 in the
    # first round, + 0.0025 a round, at most 0.06; SYNTHIA 0.02). The recipe sets it per round.
    source_portion: float = 0.03
    # Source images per target image, overriding the one computed from source_portion and the
    # two training sets' sizes (None = computed in setup). Lets a toy benchmark keep GTA5's
    # ratio when its source set is not 8x its target set.
    source_weight: float | None = None
    # Rare-class mining (see the module docstring); needs data.target.crop: null.
    crop: tuple[int, int] | None = None  # (height, width) target crop made by the method
    mine_chance: float = 0.0  # CRST --mine-chance 0.8 / MXNet --mine-port 0.8 (0 = off)
    mine_portion: float = (
        1e-3  # CRST --mine-port: predicted-pixel share below which a class is mined
    )
    mine_rarest: int = 0  # > 0: mine the N rarest predicted classes instead (MXNet: 3)

    def validate(self) -> None:
        check_non_negative(self)
        if not 0.0 <= self.source_portion <= 1.0:
            raise ConfigError(f"source_portion: must be in [0, 1], got {self.source_portion}")
        if self.source_weight is not None and self.source_weight < 0:
            raise ConfigError(f"source_weight: must be >= 0, got {self.source_weight}")
        if not 0.0 <= self.mine_chance <= 1.0:
            raise ConfigError(f"mine_chance: must be in [0, 1], got {self.mine_chance}")
        if self.mine_rarest < 0:
            raise ConfigError(f"mine_rarest: must be >= 0, got {self.mine_rarest}")
        if self.crop is not None and min(self.crop) < 1:
            raise ConfigError(f"crop: sides must be >= 1, got {list(self.crop)}")
        if self.mine_chance > 0 and self.crop is None:
            raise ConfigError("crop: rare-class mining (mine_chance > 0) crops in the method")


def source_images_per_target_image(
    source_count: int, target_count: int, source_portion: float
) -> float:
    """s = floor(source_count x source_portion) / target_count: the weight of a source image.

    CRST's savelst_SrcTgt selects int(np.floor(src_num * src_portion)) source images; the
    round's set then holds that many source images per target_count target images.
    """
    if target_count < 1:
        raise ConfigError("data.target: the target training set is empty")
    return math.floor(source_count * source_portion) / target_count


def pooled_cross_entropy(
    source_logits: torch.Tensor | None,
    source_labels: torch.Tensor | None,
    target_logits: torch.Tensor,
    target_labels: torch.Tensor,
    source_weight: float,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean CE over the valid pixels of both domains, each source pixel counting source_weight.

    Args:
        source_logits, target_logits: [B, C, h, w], upsampled (bilinear, align_corners=True) to
            their labels' size; the source pair may be None (target only).
        source_labels, target_labels: int64 [B, H, W], `ignore_index` left out.
        source_weight: s >= 0.
    Returns:
        scalar float32: (s x sum CE_source + sum CE_target) / (s x n_source + n_target); 0
        (attached to the graph) when no pixel is valid.
    """
    numerator = target_logits.sum() * 0.0
    denominator = 0.0
    pairs = [(target_logits, target_labels, 1.0)]
    if source_logits is not None and source_weight > 0:
        pairs.append((source_logits, source_labels, source_weight))
    for logits, labels, weight in pairs:
        logits = upsample_logits(logits, tuple(labels.shape[-2:]))
        per_pixel = F.cross_entropy(
            logits.float(), labels, ignore_index=ignore_index, reduction="none"
        )
        numerator = numerator + weight * per_pixel.sum()
        denominator += weight * float((labels != ignore_index).sum())
    if denominator == 0:
        return numerator
    return numerator / denominator


def mine_classes(predicted_pixels: list[int], mine_portion: float, rarest: int = 0) -> list[int]:
    """The classes rare-class mining centres crops on, rarest first.

    Args:
        predicted_pixels: pixels predicted as each class over the target split [C].
        mine_portion: CRST: every class whose share of the predicted pixels is < mine_portion.
        rarest: > 0: the `rarest` classes of smallest share instead (MXNet CBST's mine_id).
    Returns:
        class indices in ascending order of share (np.argsort's stable order on ties).
    """
    total = sum(predicted_pixels)
    shares = [count / total if total else 0.0 for count in predicted_pixels]
    order = sorted(range(len(shares)), key=lambda index: shares[index])
    if rarest > 0:
        return order[:rarest]
    return [index for index in order if shares[index] < mine_portion]


def mining_crop_offsets(
    labels: torch.Tensor, crop: tuple[int, int], classes: list[int], chance: float
) -> tuple[int, int]:
    """Top-left corner of one image's crop, centred on a mined class's pixel when drawn.

    Draws from torch's global generator (reseeded by the engine at every step): one uniform for
    the chance, then either (class, pixel) or the uniform offsets.

    Args:
        labels: int64 [H, W] pseudo label of the image (H, W >= crop).
        crop: (height, width).
        classes: mine classes.
        chance: probability of mining.
    Returns:
        (top, left) with the crop inside the image.
    """
    height, width = labels.shape
    crop_height, crop_width = crop
    mine = float(torch.rand(())) < chance
    present = [c for c in classes if bool((labels == c).any())] if mine else []
    if present:
        chosen = present[int(torch.randint(0, len(present), ()))]
        positions = (labels == chosen).nonzero()
        row, column = positions[int(torch.randint(0, positions.shape[0], ()))].tolist()
        top = min(max(row - crop_height // 2, 0), height - crop_height)
        left = min(max(column - crop_width // 2, 0), width - crop_width)
        return top, left
    top = int(torch.randint(0, height - crop_height + 1, ()))
    left = int(torch.randint(0, width - crop_width + 1, ()))
    return top, left


@METHODS.register("cbst")
class CBST(SelfTraining):
    Config = CBSTConfig

    def __init__(self, config: Any, segmentor: torch.nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        self.source_weight = config.source_weight if config.source_weight is not None else 1.0
        self.mine_classes: list[int] = []

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)  # data.target.pseudo_labels must be set
        if self.config.source_weight is None:
            source, target = ctx.datasets.get("source"), ctx.datasets.get("target")
            if source is not None and target is not None:
                self.source_weight = source_images_per_target_image(
                    len(source), len(target), self.config.source_portion
                )
        target = ctx.datasets.get("target")
        if self.config.mine_chance > 0 and target is not None:
            if getattr(target.config, "crop", None) is not None:
                raise ConfigError(
                    "data.target.crop: must be null with rare-class mining; method.crop crops"
                )
            summary = Path(target.config.pseudo_labels) / "summary.json"
            try:
                predicted = json.loads(summary.read_text(encoding="utf-8"))["predicted_pixels"]
            except (OSError, ValueError, KeyError):
                raise ConfigError(
                    f"{summary}: rare-class mining needs the pseudo-label summary "
                    "(predicted_pixels), as `udaseg pseudo-label` writes it"
                ) from None
            self.mine_classes = mine_classes(
                list(predicted.values()), self.config.mine_portion, self.config.mine_rarest
            )

    def crop_target(self, target: dict[str, Any]) -> dict[str, Any]:
        """Crop the target images and pseudo labels to method.crop (with mining, if enabled).

        Args:
            target: {"image": [B, 3, H, W], "pseudo_label": [B, H, W], ...}.
        Returns:
            {"image": [B, 3, h, w], "pseudo_label": [B, h, w]}.
        """
        crop = self.config.crop
        height, width = target["image"].shape[-2:]
        if crop is None:
            return target
        images, labels = target["image"], target["pseudo_label"]
        if height < crop[0] or width < crop[1]:
            # CRST pads the bottom and right: image 0, label void (as the datasets' crop does).
            padding = (0, max(crop[1] - width, 0), 0, max(crop[0] - height, 0))
            images = F.pad(images, padding, value=0.0)
            labels = F.pad(labels, padding, value=IGNORE_INDEX)
        cropped_images, cropped_labels = [], []
        for image, label in zip(images, labels, strict=True):
            top, left = mining_crop_offsets(label, crop, self.mine_classes, self.config.mine_chance)
            cropped_images.append(image[:, top : top + crop[0], left : left + crop[1]])
            cropped_labels.append(label[top : top + crop[0], left : left + crop[1]])
        return {"image": torch.stack(cropped_images), "pseudo_label": torch.stack(cropped_labels)}

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        source, target = batch["source"], self.crop_target(batch["target"])
        weight = self.source_weight
        source_outputs = self.segmentor(source["image"]) if weight > 0 else {}
        target_outputs = self.segmentor(target["image"])
        heads = [("logits", 1.0, "loss_seg")]
        if "aux_logits" in target_outputs:
            heads.append(("aux_logits", self.config.lambda_seg_aux, "loss_seg_aux"))
        total = 0.0
        scalars: dict[str, Any] = {"source_weight": torch.tensor(weight)}
        for key, head_weight, name in heads:
            loss = pooled_cross_entropy(
                source_outputs.get(key),
                source["label"],
                target_outputs[key],
                target["pseudo_label"],
                weight,
            )
            total = total + head_weight * loss
            scalars[name] = loss.detach()
        ctx.backward(total)
        if ctx.wants_visuals:
            scalars["visuals"] = self.visuals(target, target_outputs["logits"])
        return scalars

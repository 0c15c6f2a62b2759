"""Pixel contrastive learning from a class-wise memory bank (Alonso et al., ICCV 2021).

Shathe/SemiSeg-Contrastive `trainSSL_domain_adaptation_targetCity.py` (REFERENCE §3.11) and the
slides of ../shared/papers/001. One step:
1. bank (from `bank_start_step`): the EMA teacher segments the labelled images; its layer4
   vectors where it is correct (`bank_requires_correct`) and confident (> 0.95), projected by
   the teacher's projection head, are ranked per class by the teacher's learned selector and the
   top K per class (K = images x round(memory_per_class / labelled images)) enter the front of
   that class's FIFO bank of `memory_per_class` entries; every rank inserts the same entries
   (all-gathered), so banks stay identical across ranks;
2. labelled images: cross-entropy, plus (from `contrastive_start_step`) lambda x the weighted
   1 - cosine loss (losses/contrastive.py) between the student's predicted vectors (projection
   then prediction head) of every labelled pixel and the bank of its class;
3. target: the teacher's argmax is the pseudo label; cross-entropy weighted per pixel by
   confidence^6 x a sigmoid ramp-up, the entropy term (0.01) and the same contrastive loss on
   the pseudo labels.
The teacher is an EMA of the student (segmentor and heads), momentum cosine-annealed from 0.995
to 1 over the schedule.

For UDA the labelled images are the source batch; `labelled_target_images: N` adds N labelled
target images (the paper's semi-supervised DA setting, which fills the bank from them only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.data.label_spaces import IGNORE_INDEX
from udaseg.errors import ConfigError
from udaseg.losses.contrastive import mean_one_weights, weighted_cosine_loss
from udaseg.losses.entropy import entropy_loss
from udaseg.losses.segmentation import (
    source_segmentation_loss,
    upsample_logits,
    upsampled_softmax,
)
from udaseg.methods.base import (
    Method,
    SetupContext,
    StepContext,
    check_non_negative,
    new_layer_sgd,
)
from udaseg.methods.teachers import ema_update, frozen_copy
from udaseg.models.projection import ContrastiveHeads, pixel_vectors
from udaseg.registry import METHODS


@dataclass
class MemoryBankContrastiveConfig:
    name: str = "memory_bank_contrastive"
    lambda_seg_aux: float = 0.1  # aux-head (layer3) CE weight on labelled images, multi-level only
    lambda_contrastive_labelled: float = 0.2  # code: loss_contr_labeled * 0.2
    lambda_contrastive_target: float = 0.2  # code: loss_contr_unlabeled * 0.2
    lambda_pseudo_label: float = 1.0  # target CE on the teacher's argmax
    pseudo_label_power: float = 6.0  # per-pixel weight confidence ** 6 (code)
    lambda_entropy: float = 0.01  # entropy of the target predictions (code)
    ramp_up_steps: int = 2000  # RAMP_UP_ITERS: sigmoid ramp of the pseudo-label weight
    bank_start_step: int = 1000  # code: the bank fills from RAMP_UP_ITERS - 1000 ...
    contrastive_start_step: int = 2000  # ... and the contrastive terms start at RAMP_UP_ITERS
    memory_per_class: int = 256  # the DA script's FeatureMemory(memory_per_class=256)
    projection_channels: int = 256  # feat_dim of the projection/prediction heads
    confidence_threshold: float = 0.95  # bank: teacher confidence above this
    bank_requires_correct: bool = True  # bank: teacher prediction == label as well (code)
    # Top-K by the selector's score: "highest" (the paper and the code's comment) or "lowest"
    # (what the released code does: ascending torch.sort, first k; REFERENCE §3.11).
    bank_selection: Literal["highest", "lowest"] = "highest"
    # w_z' of the memory entries: "slides" normalises the memory selector's scores to mean 1
    # like w_p; "released_code" is what the code computes, all ones (it normalises a [1, N] row
    # over its single-element first axis, so each weight divides by itself).
    memory_weighting: Literal["slides", "released_code"] = "slides"
    # Which labelled images fill the bank; "auto": the labelled target images when there are
    # some (the paper's DA script fills it from Cityscapes only), else the source batch.
    bank_images: Literal["auto", "source", "labelled_target", "both"] = "auto"
    labelled_target_images: int = 0  # > 0: semi-supervised DA with this many labelled targets
    labelled_target_seed: int = 0  # which ones: the first N of a permutation with this seed
    teacher_momentum: float = 0.995  # EMA momentum at step 0, cosine-annealed to 1
    teacher_buffers: Literal["copy", "ema", "keep"] = "copy"  # see the card

    def validate(self) -> None:
        check_non_negative(self)
        for key in ("ramp_up_steps", "bank_start_step", "contrastive_start_step"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("memory_per_class", "projection_channels"):
            if getattr(self, key) < 2:
                raise ConfigError(f"{key}: must be >= 2, got {getattr(self, key)}")
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ConfigError(
                f"confidence_threshold: must be in [0, 1), got {self.confidence_threshold}"
            )
        if not 0.0 <= self.teacher_momentum <= 1.0:
            raise ConfigError(f"teacher_momentum: must be in [0, 1], got {self.teacher_momentum}")
        if self.labelled_target_images < 0:
            raise ConfigError(
                f"labelled_target_images: must be >= 0, got {self.labelled_target_images}"
            )
        if self.bank_images == "labelled_target" and self.labelled_target_images == 0:
            raise ConfigError("bank_images: 'labelled_target' needs labelled_target_images > 0")


def select_bank_entries(
    vectors: torch.Tensor, scores: torch.Tensor, count: int, selection: str = "highest"
) -> torch.Tensor:
    """The vectors of one class that enter the bank: all if at most `count`, else the top K.

    Args:
        vectors: [N, D] projected teacher vectors of the class that passed the confidence filter.
        scores: [N] their selector scores.
        count: K.
        selection: "highest" keeps the K best-scored vectors, "lowest" the K worst (the
            released code's ascending sort).
    Returns:
        [min(N, K), D], in score order when ranked (ties keep pixel order), else in pixel order.
    """
    if vectors.shape[0] <= count:
        return vectors
    order = torch.sort(scores, descending=selection == "highest", stable=True).indices
    return vectors[order[:count]]


class ClassMemoryBank:
    """C first-in-first-out queues of at most `size` D-vectors; the newest entries come first."""

    def __init__(self, num_classes: int, size: int, channels: int) -> None:
        self.features = torch.zeros(num_classes, size, channels)
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    def entries(self, class_index: int) -> torch.Tensor:
        """[n, D] entries of a class, newest first."""
        return self.features[class_index, : int(self.counts[class_index])]

    def add(self, class_index: int, new_entries: torch.Tensor) -> None:
        """Put [k, D] new entries in front; the oldest beyond the size drop out (the code's
        concatenate((new, memory))[:memory_per_class])."""
        size = self.features.shape[1]
        merged = torch.cat([new_entries.to(self.features), self.entries(class_index)])[:size]
        self.features[class_index, : merged.shape[0]] = merged
        self.counts[class_index] = merged.shape[0]

    def to(self, device: torch.device) -> None:
        self.features, self.counts = self.features.to(device), self.counts.to(device)

    def state(self) -> dict[str, torch.Tensor]:
        return {"features": self.features.cpu().clone(), "counts": self.counts.cpu().clone()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        if state["features"].shape != self.features.shape:
            raise ConfigError(
                f"method.memory_per_class/projection_channels: the checkpoint's memory bank has "
                f"shape {tuple(state['features'].shape)}, this config {tuple(self.features.shape)}"
            )
        device = self.features.device
        self.features, self.counts = state["features"].to(device), state["counts"].to(device)


class _Subset(torch.utils.data.Dataset):
    """Some indices of a dataset whose items take (index, augmentation seed) keys."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            return self.dataset[(self.indices[key[0]], key[1])]
        return self.dataset[self.indices[key]]


@METHODS.register("memory_bank_contrastive")
class MemoryBankContrastive(Method):
    Config = MemoryBankContrastiveConfig
    default_optimizers = {
        # The released code trains the heads and selectors in the segmentor's SGD group at 1x lr.
        "contrastive_heads": new_layer_sgd(2e-4)
    }

    def __init__(self, config: Any, segmentor: nn.Module, label_space: Any) -> None:
        super().__init__(config, segmentor, label_space)
        num_classes = segmentor.num_classes
        self.heads = ContrastiveHeads(
            segmentor.feature_channels,
            num_classes,
            config.projection_channels,
            memory_selectors=config.memory_weighting == "slides",
        )
        self.teacher = frozen_copy(segmentor)
        self.teacher_heads = frozen_copy(self.heads)
        self.bank = ClassMemoryBank(
            num_classes, config.memory_per_class, config.projection_channels
        )
        # Set by setup(); these defaults serve a method stepped without the engine (tests).
        self.entries_per_image = 1
        self.all_gather = lambda tensor: tensor.unsqueeze(0)
        self.labelled_target_stream: Any = None
        self.labelled_target_batches: Any = None

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "contrastive_heads": self.heads}

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "teacher_heads": self.teacher_heads}

    def setup(self, ctx: SetupContext) -> None:
        if not ctx.resumed:
            # The engine initialised the student (init: weights) after __init__ copied it.
            self.teacher.load_state_dict(self.segmentor.state_dict())
            self.teacher_heads.load_state_dict(self.heads.state_dict())
        self.bank.to(ctx.device)
        # Collectives exist only here (the step context has none): kept for the bank updates.
        self.all_gather = ctx.all_gather
        labelled = 0
        if self.config.labelled_target_images > 0:
            labelled = self._build_labelled_target_stream(ctx)
        source = ctx.datasets.get("source")
        bank_images = {
            "source": len(source),
            "labelled_target": labelled,
            "both": len(source) + labelled,
        }[self._bank_images()]
        # The code's per_class_samples_per_image = max(1, int(round(memory / num_samples))).
        self.entries_per_image = max(1, int(round(self.config.memory_per_class / bank_images)))

    def _build_labelled_target_stream(self, ctx: SetupContext) -> int:
        from udaseg.data.datasets import build_dataset
        from udaseg.data.loaders import TrainStream

        target = ctx.datasets["target"]
        count = self.config.labelled_target_images
        if count > len(target):
            raise ConfigError(
                f"method.labelled_target_images: {count} asked, the target training set has "
                f"{len(target)} images"
            )
        # The same target images, built as a labelled set (the unlabelled one never opens labels).
        labelled = build_dataset(target.config, self.label_space, "source")
        generator = torch.Generator().manual_seed(self.config.labelled_target_seed)
        indices = torch.randperm(len(labelled), generator=generator)[:count].tolist()
        self.labelled_target_stream = TrainStream(
            _Subset(labelled, sorted(indices)),
            batch_size=min(ctx.batch_size, count),
            seed=ctx.seed,
            name="labelled_target",
            rank=ctx.rank,
            world_size=1,  # every rank reads the same few images with its own seed stream
        )
        self.device = ctx.device
        return count

    def _bank_images(self) -> str:
        if self.config.bank_images != "auto":
            return self.config.bank_images
        return "labelled_target" if self.config.labelled_target_images > 0 else "source"

    def _labelled_target_batch(self, step: int) -> dict[str, torch.Tensor] | None:
        if self.labelled_target_stream is None:
            return None
        if self.labelled_target_batches is None:
            # A pure function of the step: a resumed run continues the same sequence.
            self.labelled_target_batches = self.labelled_target_stream.batches(step)
        batch = next(self.labelled_target_batches)
        return {
            "image": batch["image"].to(self.device).float(),
            "label": batch["label"].to(self.device).long(),
        }

    # --- the step --------------------------------------------------------------------------

    def training_step(self, batch: dict[str, dict[str, Any]], ctx: StepContext) -> dict[str, Any]:
        config = self.config
        source, target = batch["source"], batch["target"]
        labelled_target = self._labelled_target_batch(ctx.step)
        contrastive_on = ctx.step >= config.contrastive_start_step
        scalars: dict[str, Any] = {}

        # 1. The teacher's best labelled vectors enter the bank before this step's losses.
        if ctx.step >= config.bank_start_step:
            bank_sets = {
                "source": [source],
                "labelled_target": [labelled_target],
                "both": [source, labelled_target],
            }[self._bank_images()]
            images = torch.cat([item["image"] for item in bank_sets])
            labels = torch.cat([item["label"] for item in bank_sets])
            self.update_bank(images, labels)
            scalars["bank_entries"] = float(self.bank.counts.sum())

        # 2. Labelled images: cross-entropy and the contrastive pull toward the bank.
        labelled_sets = [("", source)]
        if labelled_target is not None:
            labelled_sets.append(("_labelled_target", labelled_target))
        for suffix, images_and_labels in labelled_sets:
            outputs = self.segmentor(images_and_labels["image"])
            loss, seg_scalars = source_segmentation_loss(
                outputs, images_and_labels["label"], config.lambda_seg_aux
            )
            scalars.update({f"{key}{suffix}": value for key, value in seg_scalars.items()})
            if contrastive_on:
                loss_contrastive = self.contrastive_loss(
                    outputs["features"], images_and_labels["label"]
                )
                if loss_contrastive is not None:
                    loss = loss + config.lambda_contrastive_labelled * loss_contrastive
                    scalars[f"loss_contrastive{suffix}"] = loss_contrastive.detach()
            ctx.backward(loss)
            del outputs, loss

        # 3. Target: the teacher's pseudo labels, weighted by confidence^6 and the ramp-up.
        size = tuple(target["image"].shape[-2:])
        with torch.no_grad():
            teacher_probabilities = upsampled_softmax(self.teacher(target["image"])["logits"], size)
            confidence, pseudo_labels = teacher_probabilities.max(1)
        outputs = self.segmentor(target["image"])
        logits = upsample_logits(outputs["logits"], size).float()
        weights = sigmoid_ramp_up(ctx.step, config.ramp_up_steps) * confidence.pow(
            config.pseudo_label_power
        )
        loss_pseudo = (F.cross_entropy(logits, pseudo_labels, reduction="none") * weights).mean()
        loss_entropy = entropy_loss(torch.softmax(logits, dim=1))
        loss = config.lambda_pseudo_label * loss_pseudo + config.lambda_entropy * loss_entropy
        scalars.update(
            {"loss_pseudo_label": loss_pseudo.detach(), "loss_entropy": loss_entropy.detach()}
        )
        if contrastive_on:
            loss_contrastive = self.contrastive_loss(outputs["features"], pseudo_labels)
            if loss_contrastive is not None:
                loss = loss + config.lambda_contrastive_target * loss_contrastive
                scalars["loss_contrastive_target"] = loss_contrastive.detach()
        ctx.backward(loss)
        return scalars

    def after_optimizer_step(self, ctx: StepContext) -> None:
        # Momentum cosine-annealed from teacher_momentum (0.995) to 1 (code:
        # m = 1 - (1 - 0.995) * (cos(pi * i / num_iterations) + 1) / 2).
        alpha = (
            1.0
            - (1.0 - self.config.teacher_momentum) * (math.cos(math.pi * ctx.progress) + 1.0) / 2.0
        )
        ema_update(self.teacher, self.segmentor, alpha, self.config.teacher_buffers)
        ema_update(self.teacher_heads, self.heads, alpha, self.config.teacher_buffers)

    # --- the bank and the loss -------------------------------------------------------------

    @torch.no_grad()
    def bank_candidates(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's projected vectors that pass the quality filter, and their classes.

        Args:
            images: float [B, 3, H, W]; labels: int64 [B, H, W].
        Returns:
            vectors [N, D] (projection head outputs) and int64 classes [N], at feature resolution.
        """
        outputs = self.teacher(images)
        probabilities = upsampled_softmax(outputs["logits"], tuple(labels.shape[-2:]))
        confidence, prediction = probabilities.max(1)
        # As the code: the full-resolution maps are taken to the feature grid by nearest
        # neighbour, so each feature vector gets one pixel's label, prediction and confidence.
        grid = tuple(outputs["features"].shape[-2:])
        labels, prediction, confidence = (
            F.interpolate(tensor[:, None].float(), size=grid, mode="nearest")[:, 0]
            for tensor in (labels, prediction, confidence)
        )
        keep = (confidence > self.config.confidence_threshold) & (labels != IGNORE_INDEX)
        if self.config.bank_requires_correct:
            keep &= prediction == labels
        keep = keep.flatten()
        vectors = pixel_vectors(outputs["features"])[keep].float()
        classes = labels.flatten()[keep].long()
        if vectors.shape[0] == 0:
            return vectors.new_zeros(0, self.config.projection_channels), classes
        return self.teacher_heads.projection(vectors), classes

    @torch.no_grad()
    def update_bank(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Insert each class's top-K teacher vectors of these images, the same on every rank."""
        vectors, classes = self.bank_candidates(images, labels)
        num_classes, _, channels = self.bank.features.shape
        per_class = images.shape[0] * self.entries_per_image
        # Fixed-size [C, K, D] plus counts [C] so that all_gather can stack the ranks' picks.
        picked = vectors.new_zeros(num_classes, per_class, channels)
        counts = torch.zeros(num_classes, dtype=torch.long, device=vectors.device)
        for class_index in torch.unique(classes).tolist():
            members = vectors[classes == class_index]
            scores = self.teacher_heads.feature_selectors(members, class_index)
            chosen = select_bank_entries(members, scores, per_class, self.config.bank_selection)
            picked[class_index, : chosen.shape[0]] = chosen
            counts[class_index] = chosen.shape[0]
        all_picked, all_counts = self.all_gather(picked), self.all_gather(counts)
        for class_index in range(num_classes):
            new_entries = [
                all_picked[rank, class_index, : int(all_counts[rank, class_index])]
                for rank in range(all_picked.shape[0])
            ]
            if sum(entries.shape[0] for entries in new_entries):
                self.bank.add(class_index, torch.cat(new_entries))

    def contrastive_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The class-averaged weighted 1 - cosine loss between pixels and their class's bank.

        Args:
            features: the student's decoder features [B, F, h, w].
            labels: int64 [B, H, W] labels or pseudo labels at image resolution (255 left out).
        Returns:
            scalar (attached to the heads and the segmentor), or None when fewer than two pixels
            are labelled.
        """
        grid = tuple(features.shape[-2:])
        classes = F.interpolate(labels[:, None].float(), size=grid, mode="nearest").flatten()
        keep = classes != IGNORE_INDEX
        if int(keep.sum()) < 2:  # BatchNorm1d needs two vectors
            return None
        classes = classes[keep].long()
        predicted = self.heads.prediction(
            self.heads.projection(pixel_vectors(features)[keep].float())
        )
        # A class contributes when it has two or more pixels and bank entries (code); an empty
        # bank gives 0 with a graph, so that the heads' gradients exist (and are zero).
        total = predicted.sum() * 0.0
        num_classes = self.bank.features.shape[0]
        for class_index in torch.unique(classes).tolist():
            members = predicted[classes == class_index]
            memory = self.bank.entries(class_index)
            if members.shape[0] < 2 or memory.shape[0] < 2:
                continue
            # The selector sees detached vectors: it learns weights, not the features (code).
            feature_weights = mean_one_weights(
                torch.sigmoid(self.heads.feature_selectors(members.detach(), class_index))
            )
            memory_weights = None
            if self.heads.memory_selectors is not None:
                memory_weights = mean_one_weights(
                    torch.sigmoid(self.heads.memory_selectors(memory, class_index))
                )
            total = total + weighted_cosine_loss(members, memory, feature_weights, memory_weights)
        return total / num_classes

    # --- checkpointed state ----------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        return {"bank": self.bank.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.bank.load(state["bank"])


def sigmoid_ramp_up(step: int, ramp_steps: int) -> float:
    """exp(-5 (1 - step / ramp_steps)^2) before `ramp_steps`, then 1 (the code's ramp)."""
    if step >= ramp_steps:
        return 1.0
    return math.exp(-5.0 * (1.0 - step / ramp_steps) ** 2)

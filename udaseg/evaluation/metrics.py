"""Confusion matrix, per-class IoU and mIoU with the conventions of REFERENCE §5.

The matrix has one row per ground-truth class and one column per predicted class, plus a last
column for predictions outside 0..C-1 (void, or an ignored Cityscapes labelId read from a
prediction file). With that extra column the IoUs are exactly those of cityscapesScripts'
evalPixelLevelSemanticLabeling (REFERENCE §5.3):

    IoU_c = TP / (TP + FP + FN)
    TP = M[c, c]
    FN = sum(M[c, :]) - TP         (the extra column included: predicted void is a miss)
    FP = sum(M[r, c]) over GT classes r != c

Ground-truth pixels of ignored classes never reach the matrix, so they never make false
positives. When predictions hold only the C classes the extra column is empty and this is the
fast-hist IoU of AdaptSegNet/ADVENT/BDL (REFERENCE §5.1); mIoU is the nanmean over a subset's
classes in both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from udaseg.data.label_spaces import EvalSubset, LabelSpace

_CONVENTIONS = ("count", "ignore")


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _none_to_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (no RuntimeWarning)."""
    kept = [float(v) for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


@dataclass
class EvaluationResult:
    """Scores of one model on one evaluation set.

    Attributes:
        label_space: name of the label space, e.g. "cityscapes19".
        class_names: one name per class.
        per_class_iou: IoU per class in 0..1 from the full matrix; NaN for a class that appears
            neither in the ground truth nor in the predictions.
        miou: mIoU per subset name, in 0..1 (NaN if every class of the subset is NaN).
        subsets: per subset name, {"classes": [...], "gt_of_other_classes": "count"|"ignore",
            "description": str}.
        pixel_accuracy: correctly predicted pixels / non-void ground-truth pixels.
        num_images: images scored.
        protocol: how predictions were made (input size, mode, flip...), filled by callers.
        subset_per_class_iou: for subsets whose convention changes the IoUs ("ignore" over fewer
            classes than the space has), that subset's IoU per class (NaN outside it).
        confusion_matrix: the [C, C+1] counts, so other metrics can be derived later.
    """

    label_space: str
    class_names: list[str]
    per_class_iou: list[float]
    miou: dict[str, float]
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)
    pixel_accuracy: float = float("nan")
    num_images: int = 0
    protocol: dict[str, Any] = field(default_factory=dict)
    subset_per_class_iou: dict[str, list[float]] = field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN becomes None."""
        return {
            "label_space": self.label_space,
            "class_names": list(self.class_names),
            "per_class_iou": [_nan_to_none(v) for v in self.per_class_iou],
            "miou": {name: _nan_to_none(v) for name, v in self.miou.items()},
            "subsets": {
                name: {
                    "classes": list(info["classes"]),
                    "gt_of_other_classes": info["gt_of_other_classes"],
                    "description": info.get("description", ""),
                }
                for name, info in self.subsets.items()
            },
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy),
            "num_images": int(self.num_images),
            "protocol": to_json_safe(self.protocol),
            "subset_per_class_iou": {
                name: [_nan_to_none(v) for v in values]
                for name, values in self.subset_per_class_iou.items()
            },
            "confusion_matrix": self.confusion_matrix,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """Inverse of `to_dict` (None becomes NaN again)."""
        return cls(
            label_space=data["label_space"],
            class_names=list(data["class_names"]),
            per_class_iou=[_none_to_nan(v) for v in data["per_class_iou"]],
            miou={name: _none_to_nan(v) for name, v in data["miou"].items()},
            subsets={
                name: {
                    "classes": list(info["classes"]),
                    "gt_of_other_classes": info["gt_of_other_classes"],
                    "description": info.get("description", ""),
                }
                for name, info in data.get("subsets", {}).items()
            },
            pixel_accuracy=_none_to_nan(data.get("pixel_accuracy")),
            num_images=int(data.get("num_images", 0)),
            protocol=dict(data.get("protocol", {})),
            subset_per_class_iou={
                name: [_none_to_nan(v) for v in values]
                for name, values in data.get("subset_per_class_iou", {}).items()
            },
            confusion_matrix=data.get("confusion_matrix"),
        )


def to_json_safe(value: Any) -> Any:
    """Plain data for json: tuples to lists, NaN to None, numpy/torch scalars to numbers."""
    if isinstance(value, EvaluationResult):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN or infinity
    return value


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU of a [C, C+1] matrix (rows GT, columns prediction, last column outside).

    Returns:
        float64 array [C]; NaN where TP + FP + FN = 0.
    """
    counts = np.asarray(counts, dtype=np.int64)
    num_classes = counts.shape[0]
    true_positives = np.diag(counts[:, :num_classes])
    # The whole GT row, extra column included: a pixel predicted as void misses its class.
    false_negatives = counts.sum(axis=1) - true_positives
    # Column c over the other GT rows only; GT of ignored classes is not in the matrix at all.
    false_positives = counts[:, :num_classes].sum(axis=0) - true_positives
    denominator = (true_positives + false_positives + false_negatives).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denominator > 0, true_positives / denominator, np.nan)
    return iou


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pairs accumulated over a data set.

    `counts` is int64 [C, C+1]: rows are GT classes 0..C-1, columns predicted classes 0..C-1
    and, last, "predicted something outside 0..C-1". GT pixels outside 0..C-1 (the ignore
    index) are dropped.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)
        self.num_images = 0

    @classmethod
    def from_counts(cls, counts: torch.Tensor | np.ndarray, num_images: int = 0) -> ConfusionMatrix:
        """Wrap existing [C, C+1] counts."""
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.int64)
        if counts.dim() != 2 or counts.shape[1] != counts.shape[0] + 1:
            raise ValueError(f"counts must be [C, C+1], got {list(counts.shape)}")
        matrix = cls(counts.shape[0])
        matrix.counts = counts.clone()
        matrix.num_images = int(num_images)
        return matrix

    def reset(self) -> None:
        self.counts.zero_()
        self.num_images = 0

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch.

        Args:
            predictions: integer tensor [B, H, W] or [H, W] of predicted class ids; values
                outside 0..C-1 go to the last column.
            labels: integer tensor of the same shape; values outside 0..C-1 (void) are dropped.
        """
        if predictions.shape != labels.shape:
            raise ValueError(
                f"predictions {list(predictions.shape)} and labels {list(labels.shape)} differ"
            )
        if labels.dim() not in (2, 3):
            raise ValueError(f"expected [B, H, W] or [H, W], got {list(labels.shape)}")
        self.num_images += 1 if labels.dim() == 2 else labels.shape[0]
        num_classes = self.num_classes
        labels = labels.to(predictions.device).reshape(-1).long()
        predictions = predictions.reshape(-1).long()
        valid = (labels >= 0) & (labels < num_classes)
        labels = labels[valid]
        predictions = predictions[valid]
        outside = (predictions < 0) | (predictions >= num_classes)
        predictions = torch.where(outside, torch.full_like(predictions, num_classes), predictions)
        pair_index = labels * (num_classes + 1) + predictions
        histogram = torch.bincount(pair_index, minlength=num_classes * (num_classes + 1))
        self.counts += histogram.reshape(num_classes, num_classes + 1).to(self.counts.device)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (returns self)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} into {self.num_classes} classes")
        self.counts += other.counts.to(self.counts.device)
        self.num_images += other.num_images
        return self

    def all_reduce(self) -> None:
        """Sum counts (and image numbers) over processes; a no-op without torch.distributed."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        device = self.counts.device
        if torch.distributed.get_backend() == "nccl":
            # NCCL only reduces CUDA tensors.
            device = torch.device("cuda", torch.cuda.current_device())
        packed = torch.cat(
            [self.counts.reshape(-1), torch.tensor([self.num_images], dtype=torch.int64)]
        ).to(device)
        torch.distributed.all_reduce(packed)
        packed = packed.to(self.counts.device)
        self.counts = packed[:-1].reshape(self.counts.shape).clone()
        self.num_images = int(packed[-1])

    def compute(
        self,
        label_space: LabelSpace,
        subsets: Sequence[str | EvalSubset] | None = None,
    ) -> EvaluationResult:
        """Per-class IoU, one mIoU per subset, pixel accuracy.

        Args:
            label_space: the space the counts are in (its num_classes must match).
            subsets: subset names (or EvalSubset objects) to report; None = all of the space's
                (one "mIoU" over every class if the space defines none).
        """
        if label_space.num_classes != self.num_classes:
            raise ValueError(
                f"label space {label_space.name} has {label_space.num_classes} classes, "
                f"the matrix {self.num_classes}"
            )
        counts = self.counts.detach().cpu().numpy().astype(np.int64)
        per_class_iou = iou_from_counts(counts)

        if subsets is None:
            chosen = list(label_space.subsets) or [
                EvalSubset("mIoU", tuple(range(self.num_classes)), "count", "all classes")
            ]
        else:
            chosen = [s if isinstance(s, EvalSubset) else label_space.subset(s) for s in subsets]

        miou: dict[str, float] = {}
        subset_info: dict[str, dict[str, Any]] = {}
        subset_per_class_iou: dict[str, list[float]] = {}
        for subset in chosen:
            if subset.gt_of_other_classes not in _CONVENTIONS:
                raise ValueError(
                    f"subset {subset.name}: gt_of_other_classes must be one of {_CONVENTIONS}"
                )
            classes = [int(c) for c in subset.classes]
            subset_iou = per_class_iou
            if subset.gt_of_other_classes == "ignore" and len(set(classes)) < self.num_classes:
                # GT pixels of the other classes become void: drop their rows.
                kept_rows = np.zeros_like(counts)
                kept_rows[classes] = counts[classes]
                subset_iou = iou_from_counts(kept_rows)
                inside = np.zeros(self.num_classes, dtype=bool)
                inside[classes] = True
                subset_per_class_iou[subset.name] = np.where(inside, subset_iou, np.nan).tolist()
            miou[subset.name] = nanmean(subset_iou[classes])
            subset_info[subset.name] = {
                "classes": classes,
                "gt_of_other_classes": subset.gt_of_other_classes,
                "description": subset.description,
            }

        total = int(counts.sum())
        correct = int(np.trace(counts[:, : self.num_classes]))
        return EvaluationResult(
            label_space=label_space.name,
            class_names=list(label_space.class_names),
            per_class_iou=per_class_iou.tolist(),
            miou=miou,
            subsets=subset_info,
            pixel_accuracy=correct / total if total else float("nan"),
            num_images=self.num_images,
            subset_per_class_iou=subset_per_class_iou,
            confusion_matrix=counts.tolist(),
        )

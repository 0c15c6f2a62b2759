"""Scoring a predictor on a labelled validation loader (REFERENCE §5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from udaseg.config import EvalConfig
from udaseg.data.label_spaces import LabelSpace
from udaseg.evaluation.inference import predict_with_protocol
from udaseg.evaluation.metrics import ConfusionMatrix, EvaluationResult


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def protocol_of(eval_config: EvalConfig) -> dict[str, Any]:
    """The inference settings that change the numbers, recorded next to them."""
    protocol: dict[str, Any] = {
        "input_size": list(eval_config.input_size) if eval_config.input_size else None,
        "mode": eval_config.mode,
        "flip": bool(eval_config.flip),
        "align_corners": bool(eval_config.align_corners),
        # Validation datasets resize with PIL themselves; `resize` says how `predict` and
        # pseudo-labelling reach input_size, which changes their pixels.
        "resize": eval_config.resize,
        "logits_upsampling": "bilinear to label resolution",
        "max_images": eval_config.max_images,
        "precision": eval_config.precision,
    }
    if eval_config.mode == "slide":
        protocol["window"] = list(eval_config.window)
        protocol["stride"] = list(eval_config.stride)
    return protocol


def _batches_to_run(loader: Iterable[Any], limit: int | None, batch_size: int) -> int | None:
    """How many batches this process will score: the loader's, or fewer under `max_images`."""
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if limit is None:
        return total
    # A DataLoader knows its batch size; eval.batch_size is what eval_loader was built with.
    per_batch = getattr(loader, "batch_size", None) or batch_size
    needed = math.ceil(limit / max(per_batch, 1))
    return needed if total is None else min(total, needed)


def evaluate(
    predict_fn: Callable[[torch.Tensor], Any],
    loader: Iterable[dict[str, Any]],
    label_space: LabelSpace,
    eval_config: EvalConfig,
    device: torch.device | str,
    progress: bool = False,
) -> EvaluationResult:
    """Confusion matrix over a validation loader, then IoUs.

    Args:
        predict_fn: float images [B, 3, h, w] (RGB 0..255) -> logits [B, C, h', w']; the
            caller puts its modules in eval mode.
        loader: yields batches with "image" uint8 [B, 3, H, W] (already resized to
            eval.input_size by the dataset) and "label" int64 [B, H', W'] train ids at label
            resolution (void = label_space.ignore_index).
        label_space: the classes predicted and scored.
        eval_config: inference protocol and subsets.
        device: where inference runs.
        progress: show a tqdm bar.
    Returns:
        The result, summed over processes under torch.distributed, with `protocol` filled.
    """
    matrix = ConfusionMatrix(label_space.num_classes, device=device)
    # `max_images` caps the total; under DDP the loader is sharded, so each rank takes its share.
    limit = eval_config.max_images
    if limit is not None:
        limit = math.ceil(limit / _world_size())

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=_batches_to_run(loader, limit, eval_config.batch_size),
            desc="evaluate",
            unit="batch",
            dynamic_ncols=True,
        )

    label_size: list[int] | None = None
    with torch.inference_mode():
        for batch in loader:
            if limit is not None and matrix.num_images >= limit:
                break
            images = batch["image"]
            labels = batch["label"]
            if limit is not None:
                keep = limit - matrix.num_images
                images, labels = images[:keep], labels[:keep]
            images = images.to(device, non_blocking=True).float()
            labels = labels.to(device, non_blocking=True)
            label_size = list(labels.shape[-2:])
            logits = predict_with_protocol(predict_fn, images, labels.shape[-2:], eval_config)
            matrix.update(logits.argmax(dim=1), labels)
            if bar is not None:
                bar.update(1)
            if limit is not None and matrix.num_images >= limit:
                break  # before the loader reads a batch that would not be scored
    if bar is not None:
        bar.close()

    matrix.all_reduce()
    result = matrix.compute(label_space, eval_config.subsets)
    result.protocol = {**protocol_of(eval_config), "label_size": label_size}
    return result

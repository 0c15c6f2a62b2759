"""`udaseg score PRED_DIR GT_DIR`: score prediction PNGs against Cityscapes ground truth.

The numbers are those of cityscapesScripts' evalPixelLevelSemanticLabeling (REFERENCE §5.3):
each `{city}_{seq}_{frame}_gtFine_labelIds.png` is matched to the one prediction under PRED_DIR
whose file name starts with `{city}_{seq}_{frame}` and ends in `.png`, and the IoUs come from
the same confusion-matrix formula (udaseg.evaluation.metrics). It is faster because files are
read in a thread pool and each pair is reduced to one 256x256 histogram of (GT value,
predicted value); the mapping to classes is applied once, to the summed histogram.

Predictions may be Cityscapes labelIds (what the official evaluator reads; ids that are
ignored in evaluation count as "predicted void", a miss) or train ids (255 = void).
"""

from __future__ import annotations

import argparse
import bisect
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from udaseg.data.label_spaces import (
    CITYSCAPES_LABEL_IDS,
    IGNORE_INDEX,
    LABEL_SPACES,
    LabelSpace,
    get_label_space,
)
from udaseg.errors import DataError
from udaseg.evaluation.metrics import ConfusionMatrix, EvaluationResult
from udaseg.evaluation.report import format_table, write_json

GT_SUFFIX = "_gtFine_labelIds.png"
DEFAULT_SUBSETS = ("mIoU19", "mIoU16", "mIoU13")
MAX_LABEL_ID = 33  # the largest Cityscapes labelId ("bicycle"); labelIds files hold 0..33
_INVALID = -1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", help="folder of prediction PNGs (searched recursively)")
    parser.add_argument(
        "gt_dir",
        help="Cityscapes root (gtFine/<split>/<city>/*_gtFine_labelIds.png), a folder of city "
        "folders, or a folder of *_gtFine_labelIds.png files",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument(
        "--format",
        choices=("auto", "labelIds", "trainIds"),
        default="auto",
        help="what prediction values are: Cityscapes labelIds, train ids (255 = void), or "
        "decided from the values (default)",
    )
    parser.add_argument("--split", default="val", help="gtFine split under a Cityscapes root")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads reading PNGs (default: min(8, CPUs))",
    )
    parser.add_argument(
        "--label-space",
        default="cityscapes19",
        choices=sorted(LABEL_SPACES),
        help="classes the predictions are scored in (train ids are in this space's order); "
        "GT of Cityscapes classes outside it is void",
    )
    parser.add_argument(
        "--subsets",
        help="comma-separated mIoU subsets to report (default: mIoU19,mIoU16,mIoU13 where the "
        "label space has them, else all of its subsets)",
    )


# --- Files ----------------------------------------------------------------------------------


def find_ground_truth(gt_dir: Path, split: str) -> list[Path]:
    """The `*_gtFine_labelIds.png` files of a Cityscapes root, a split folder or a city folder.

    Raises:
        DataError: the folder does not exist or holds no such file.
    """
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder {gt_dir} does not exist")
    if (gt_dir / "gtFine").is_dir():
        root = gt_dir / "gtFine" / split
        if not root.is_dir():
            raise DataError(f"{gt_dir} is a Cityscapes root but has no gtFine/{split} folder")
    elif (gt_dir / split).is_dir():
        root = gt_dir / split  # the gtFine folder itself
    else:
        root = gt_dir
    # Two levels, not a recursive search: a root holding train/ and val/ must not mix them.
    files = sorted(root.glob(f"*{GT_SUFFIX}")) + sorted(root.glob(f"*/*{GT_SUFFIX}"))
    if not files:
        raise DataError(
            f"no *{GT_SUFFIX} files under {root}; expected a Cityscapes root with "
            f"gtFine/{split}/<city>/<city>_<seq>_<frame>{GT_SUFFIX}, a folder of city folders, "
            "or the GT files themselves"
        )
    return files


def match_predictions(gt_files: list[Path], pred_dir: Path) -> list[tuple[Path, Path]]:
    """Pair each GT file with the unique prediction `{city}_{seq}_{frame}*.png` under pred_dir.

    Returns:
        (prediction, ground truth) pairs in GT order.
    Raises:
        DataError: pred_dir missing, a GT without prediction, or one with several.
    """
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder {pred_dir} does not exist")
    gt_set = {path.resolve() for path in gt_files}
    candidates: list[tuple[str, str]] = []
    for root, _, filenames in os.walk(pred_dir):
        for filename in filenames:
            if filename.endswith(".png"):
                candidates.append((filename, root))
    candidates.sort()
    names = [name for name, _ in candidates]

    pairs = []
    for gt_path in gt_files:
        prefix = gt_path.name[: -len(GT_SUFFIX)]
        matches = []
        # Names starting with `prefix` are contiguous in sorted order.
        for index in range(bisect.bisect_left(names, prefix), len(names)):
            if not names[index].startswith(prefix):
                break
            path = Path(candidates[index][1]) / names[index]
            if path.resolve() not in gt_set:  # GT files inside PRED_DIR are not predictions
                matches.append(path)
        if not matches:
            raise DataError(
                f"no prediction for ground truth {gt_path} (looked for {prefix}*.png under "
                f"{pred_dir})"
            )
        if len(matches) > 1:
            raise DataError(
                f"several predictions for ground truth {gt_path.name}: "
                f"{matches[0]} and {matches[1]}"
            )
        pairs.append((matches[0], gt_path))
    return pairs


def read_label_png(path: Path, role: str) -> np.ndarray:
    """A single-channel PNG as an integer array [H, W] with values in 0..255.

    Palettised PNGs are read as indices (never converted to RGB).
    """
    try:
        with Image.open(path) as image:
            array = np.array(image)
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError for bad PNGs
        message = " ".join(str(error).split())
        raise DataError(f"{path}: unreadable {role} PNG ({message})") from None
    if array.ndim != 2:
        raise DataError(
            f"{path}: {role} has shape {list(array.shape)}; expected one channel of ids"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise DataError(f"{path}: {role} holds values outside 0..255 ({array.dtype})")
    return array


def _pair_histogram(
    prediction_path: Path, gt_path: Path, gt_lookup: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads one pair.

    Returns:
        The non-empty cells of the 256x256 histogram of (GT value, predicted value), as flat
        indices GT * 256 + prediction and int64 counts (sparse, so that hundreds of finished
        pairs waiting to be summed take little memory), and the predicted values.
    """
    gt = read_label_png(gt_path, "ground truth")
    prediction = read_label_png(prediction_path, "prediction")
    if prediction.shape != gt.shape:
        raise DataError(
            f"{prediction_path}: prediction is {prediction.shape[1]}x{prediction.shape[0]} "
            f"but ground truth {gt_path.name} is {gt.shape[1]}x{gt.shape[0]} (width x height)"
        )
    # Both are at most 255, so the pair fits in 16 bits.
    encoded = gt.astype(np.uint16) * 256 + prediction.astype(np.uint16)
    histogram = np.bincount(encoded.reshape(-1), minlength=256 * 256).astype(np.int64)
    joint = histogram.reshape(256, 256)
    gt_values = np.flatnonzero(joint.sum(axis=1))
    bad = gt_values[gt_lookup[gt_values] == _INVALID]
    if bad.size:
        raise DataError(f"{gt_path}: ground truth holds {int(bad[0])}, not a Cityscapes labelId")
    cells = np.flatnonzero(histogram)
    return cells, histogram[cells], np.flatnonzero(joint.sum(axis=0))


# --- Prediction format ----------------------------------------------------------------------


def prediction_lookups(label_space: LabelSpace) -> dict[str, np.ndarray]:
    """Per format, raw prediction value -> confusion column (C = outside) or _INVALID."""
    num_classes = label_space.num_classes
    mapping = CITYSCAPES_LABEL_IDS.into(label_space)
    label_ids = np.full(256, _INVALID, dtype=np.int64)
    for raw, train_id in mapping.table.items():
        if 0 <= raw <= MAX_LABEL_ID:
            label_ids[raw] = train_id if 0 <= train_id < num_classes else num_classes
    label_ids[IGNORE_INDEX] = num_classes  # void as many tools write it; the official crashes
    train_ids = np.full(256, _INVALID, dtype=np.int64)
    train_ids[:num_classes] = np.arange(num_classes)
    train_ids[IGNORE_INDEX] = num_classes
    return {"labelIds": label_ids, "trainIds": train_ids}


def decide_format(values: set[int], label_space: LabelSpace) -> tuple[str | None, str]:
    """Tell labelIds from train ids by the values the whole folder holds.

    A value in C..33 cannot be a train id: labelIds. Otherwise a value in 1..C-1 that is not
    the labelId of one of the space's classes (a model writing labelIds only writes those, and
    0 for void) cannot come from such a model: train ids. When neither occurs (only values
    like 0, 7, 8, 11, 12, 13, 17, 255, valid in both), the folder is ambiguous.

    Returns:
        (format or None when ambiguous, the reason in words).
    """
    num_classes = label_space.num_classes
    only_label_ids = sorted(v for v in values if num_classes <= v <= MAX_LABEL_ID)
    if only_label_ids:
        return "labelIds", (
            f"values {_short(only_label_ids)} occur, which are not train ids (0..{num_classes - 1})"
        )
    model_label_ids = set(label_space.cityscapes_label_ids or ()) | {0}
    only_train_ids = sorted(v for v in values if 0 < v < num_classes and v not in model_label_ids)
    if only_train_ids:
        return "trainIds", (
            f"no value in {num_classes}..{MAX_LABEL_ID}, and values {_short(only_train_ids)} "
            "occur, which are not labelIds of the predicted classes"
        )
    return None, f"the predictions hold only {_short(sorted(values))}, valid in both formats"


def _short(values: list[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "")


# --- Command --------------------------------------------------------------------------------


def score_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    prediction_format: str = "auto",
    split: str = "val",
    workers: int = 4,
    label_space: LabelSpace | str = "cityscapes19",
    subsets: list[str] | None = None,
    log: Callable[[str], object] = print,
) -> EvaluationResult:
    """Score a prediction folder against ground truth (the work of `udaseg score`).

    Args:
        prediction_format: "auto", "labelIds" or "trainIds".
        subsets: mIoU subsets; None = mIoU19/16/13 where the space has them, else all.
        log: called with one line describing the format decision.
    Raises:
        DataError: see find_ground_truth, match_predictions, read_label_png and the format.
    """
    if isinstance(label_space, str):
        label_space = get_label_space(label_space)
    if subsets is None:
        known = [subset.name for subset in label_space.subsets]
        subsets = [name for name in DEFAULT_SUBSETS if name in known] or known or None

    gt_files = find_ground_truth(Path(gt_dir), split)
    pairs = match_predictions(gt_files, Path(pred_dir))

    gt_mapping = CITYSCAPES_LABEL_IDS.into(label_space)
    gt_lookup = np.full(256, _INVALID, dtype=np.int64)
    for raw, train_id in gt_mapping.table.items():
        if 0 <= raw <= 255:
            gt_lookup[raw] = train_id

    total = np.zeros(256 * 256, dtype=np.int64)
    values_by_file: list[tuple[Path, np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as executor:
        futures = [
            executor.submit(_pair_histogram, prediction, gt, gt_lookup) for prediction, gt in pairs
        ]
        try:
            for (prediction, _), future in zip(pairs, futures, strict=True):
                cells, cell_counts, predicted_values = future.result()
                total[cells] += cell_counts
                values_by_file.append((prediction, predicted_values))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    lookups = prediction_lookups(label_space)
    # Values no format accepts (34..254) are an error whatever the decision.
    for path, predicted in values_by_file:
        bad = predicted[(lookups["labelIds"][predicted] == _INVALID)]
        bad = bad[lookups["trainIds"][bad] == _INVALID]
        if bad.size:
            raise DataError(
                f"{path}: prediction holds {int(bad[0])}, neither a Cityscapes labelId (0..33) "
                f"nor a train id (0..{label_space.num_classes - 1}) nor void (255)"
            )

    if prediction_format == "auto":
        all_values = set().union(*(set(v.tolist()) for _, v in values_by_file))
        decided, reason = decide_format(all_values, label_space)
        if decided is None:
            raise DataError(
                f"cannot tell whether the predictions in {pred_dir} are labelIds or train ids: "
                f"{reason}; pass --format labelIds or --format trainIds"
            )
        log(f"prediction format: {decided} (auto: {reason}; --format overrides)")
    elif prediction_format in lookups:
        decided, reason = prediction_format, "given"
        log(f"prediction format: {decided}")
    else:
        raise DataError(f"unknown prediction format {prediction_format!r}")

    columns = lookups[decided]
    for path, predicted in values_by_file:
        bad = predicted[columns[predicted] == _INVALID]
        if bad.size:
            expected = (
                f"0..{MAX_LABEL_ID} or 255"
                if decided == "labelIds"
                else f"0..{label_space.num_classes - 1} or 255"
            )
            raise DataError(
                f"{path}: prediction holds {int(bad[0])}, not a {decided} value ({expected}); "
                "check --format"
            )

    # Fold the raw (GT value, predicted value) histogram into classes: at most 34 x 256 cells.
    num_classes = label_space.num_classes
    joint = total.reshape(256, 256)
    gt_values = np.flatnonzero((gt_lookup >= 0) & (gt_lookup < num_classes))
    counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(
        counts, (gt_lookup[gt_values][:, None], columns[None, :].clip(min=0)), joint[gt_values]
    )

    result = ConfusionMatrix.from_counts(counts, num_images=len(pairs)).compute(
        label_space, subsets
    )
    result.protocol = {
        "tool": "udaseg score",
        "predictions": str(pred_dir),
        "ground_truth": str(gt_dir),
        "split": split,
        "prediction_format": decided,
        "format_decision": reason,
        "iou": "cityscapesScripts evalPixelLevelSemanticLabeling (ignored predicted ids are misses)",
    }
    return result


def run(args: argparse.Namespace) -> int:
    from udaseg.files import check_output_file

    if args.json:
        # Before scoring: a bad path must not waste the reading of every PNG.
        check_output_file(args.json, "--json", args.overwrite)
    start = time.perf_counter()
    subsets = [name.strip() for name in args.subsets.split(",")] if args.subsets else None
    result = score_folders(
        args.pred_dir,
        args.gt_dir,
        prediction_format=args.format,
        split=args.split,
        workers=args.workers,
        label_space=args.label_space,
        subsets=subsets,
    )
    elapsed = time.perf_counter() - start
    result.protocol["seconds"] = round(elapsed, 3)
    column = Path(args.pred_dir).resolve().name or "predictions"
    print(format_table({column: result}))
    print(f"{result.num_images} images scored in {elapsed:.1f} s")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0

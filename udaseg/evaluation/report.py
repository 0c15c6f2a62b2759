"""Printing and saving evaluation results.

Every table ends with one line per mIoU subset saying which classes it averages and what
happens to the ground truth of the other classes, because mIoU16 has two conventions in the
literature (REFERENCE §7.5) and a number without its convention cannot be compared.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from udaseg.evaluation.metrics import EvaluationResult, to_json_safe
from udaseg.files import atomic_write

_CONVENTION_TEXT = {
    "count": "GT pixels of other classes still count as false positives",
    "ignore": "GT pixels of other classes are void",
}


def _percent(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.1f}"


def _footnote(name: str, result: EvaluationResult) -> str:
    info = result.subsets[name]
    class_names = result.class_names
    classes = list(info["classes"])
    convention = _CONVENTION_TEXT.get(info["gt_of_other_classes"], info["gt_of_other_classes"])
    parts = [f"{name}: nanmean of {len(classes)} class IoUs"]
    if len(classes) < len(class_names):
        left_out = [class_names[c] for c in range(len(class_names)) if c not in classes]
        parts.append(f"without {', '.join(left_out)}; {convention}")
    if info.get("description"):
        parts.append(str(info["description"]))
    if name in result.subset_per_class_iou:
        parts.append("its class IoUs differ from the table's: see subset_per_class_iou in the JSON")
    return "; ".join(parts)


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as short as it stays unambiguous: relative to the working directory when under it."""
    text = str(path)
    if "://" in text:  # a URL (released weights): its file name says which
        return text.rstrip("/").rsplit("/", 1)[-1]
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return text


def result_title(method_name: str, source: str | os.PathLike[str], step: int | None = None) -> str:
    """A table column heading naming the method and which run or weights were scored.

    `source_only (runs/toy/oracle) @ 2000`: with several runs of one method in a log or a
    results page, the method alone does not say which run a number belongs to.
    """
    title = f"{method_name} ({display_path(source)})"
    return title if step is None else f"{title} @ {step}"


def format_table(results: Mapping[str, EvaluationResult]) -> str:
    """A per-class IoU table with one column per result.

    Rows: classes (union of the results' classes, in order of appearance), one mIoU row per
    subset, pixel accuracy, number of images; then one footnote per subset with its
    convention. IoUs in percent with one decimal; "-" marks a class that a result does not
    have or that none of its reported subsets averages, "n/a" an undefined IoU (the class is
    neither in the ground truth nor in the predictions).
    """
    if not results:
        return "(no results)"
    columns = list(results)
    class_names: list[str] = []
    subset_names: list[str] = []
    for result in results.values():
        class_names += [name for name in result.class_names if name not in class_names]
        subset_names += [name for name in result.miou if name not in subset_names]

    rows: list[list[str]] = []
    for class_name in class_names:
        row = [class_name]
        for result in results.values():
            if class_name not in result.class_names:
                row.append("-")
                continue
            index = result.class_names.index(class_name)
            reported = any(index in info["classes"] for info in result.subsets.values())
            row.append(
                _percent(result.per_class_iou[index]) if reported or not result.subsets else "-"
            )
        rows.append(row)
    separator_at = len(rows)
    for subset_name in subset_names:
        rows.append(
            [subset_name]
            + [
                _percent(result.miou[subset_name]) if subset_name in result.miou else "-"
                for result in results.values()
            ]
        )
    rows.append(["pixel accuracy"] + [_percent(r.pixel_accuracy) for r in results.values()])
    rows.append(["images"] + [str(r.num_images) for r in results.values()])

    first_width = max(len("class"), *(len(row[0]) for row in rows))
    widths = [
        max(len(column), 6, *(len(row[i + 1]) for row in rows)) for i, column in enumerate(columns)
    ]

    def line(cells: list[str]) -> str:
        text = cells[0].ljust(first_width)
        for cell, width in zip(cells[1:], widths, strict=True):
            text += "  " + cell.rjust(width)
        return text.rstrip()

    rule = "-" * (first_width + sum(width + 2 for width in widths))
    lines = [line(["class", *columns]), rule]
    lines += [line(row) for row in rows[:separator_at]]
    lines.append(rule)
    lines += [line(row) for row in rows[separator_at:]]

    # One footnote per distinct (subset, convention); name the columns when they disagree.
    footnotes: list[str] = []
    for subset_name in subset_names:
        variants: dict[str, list[str]] = {}
        for column, result in results.items():
            if subset_name in result.subsets:
                text = _footnote(subset_name, result)
                variants.setdefault(text, []).append(column)
        for text, owners in variants.items():
            suffix = f" [{', '.join(owners)}]" if len(variants) > 1 else ""
            footnotes.append(f"  {text}{suffix}")
    if footnotes:
        lines.append("")
        lines += footnotes
    return "\n".join(lines)


def write_json(
    path: str | os.PathLike[str],
    result_or_results: EvaluationResult | Mapping[str, Any],
) -> None:
    """Write a result, or dicts/lists of results and plain data, as JSON, atomically.

    NaN becomes null (results keep NaN for undefined IoUs; JSON has no NaN).

    The file is written next to its destination and moved over it with os.replace, so a
    reader never sees half a file and a crash leaves the old one intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_json_safe(result_or_results)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))

"""Per-class IoU of the rarest source classes, per method or recipe stage, over seeds.

A self-training method that drifts toward the frequent classes shows it here first: the mean
mIoU can hold while the rare classes fall to zero (CBST's motivation). "Rarest" is measured on
the source labels (pixel counts over the whole source set, no crop or flip), never on target
labels. Reads the per-class IoUs that `bench/toy_methods.py` wrote to <out>/summary.json:

    python bench/rare_class_iou.py --out runs/v2 --classes 5 source_only adabn toy_cbst/round0 ...

Prints a markdown table: one row per label, one column per rare class (mean ± std over the
seeds in the summary), rarest first, with each class's share of the source pixels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from udaseg.config import load_config
from udaseg.data.label_spaces import get_label_space
from udaseg.pseudo_labels import source_label_maps
from udaseg.reporting import mean_std


def source_class_pixels(config_path: str) -> tuple[list[str], np.ndarray]:
    """(class names, int64 [C] pixel counts) of a config's data.source labels (void excluded)."""
    num_classes, maps = source_label_maps(config_path)
    counts = np.zeros(num_classes, dtype=np.int64)
    for label in maps:
        label = label.numpy().ravel()
        counts += np.bincount(label[label < num_classes], minlength=num_classes)
    names = get_label_space(load_config(config_path, []).data.label_space).class_names
    return list(names), counts


def rare_class_table(
    summary: dict, labels: list[str], names: list[str], counts: np.ndarray, number: int
) -> str:
    """Markdown: label x the `number` rarest classes present in the source, mean ± std IoU."""
    present = np.flatnonzero(counts > 0)
    rarest = present[np.argsort(counts[present], kind="stable")][:number]
    share = counts / counts.sum()
    header = "| label | " + " | ".join(
        f"{names[index]} ({100 * share[index]:.2f}% of source pixels)" for index in rarest
    )
    lines = [header + " |", "|---|" + "---|" * len(rarest)]
    for label in labels:
        if label not in summary:
            raise SystemExit(f"rare_class_iou: {label!r} is not in summary.json")
        runs = summary[label]["runs"]
        cells = []
        for index in rarest:
            mean, spread = mean_std([100 * run["per_class_iou"][index] for run in runs])
            cells.append(f"{mean:.2f} ± {spread:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("labels", nargs="+", help="labels of summary.json (methods, recipe/stage)")
    parser.add_argument("--out", default="runs/compare", help="bench/toy_methods.py's --out")
    parser.add_argument("--classes", type=int, default=5, help="how many rare classes")
    parser.add_argument("--source-config", default="toy/source_only.yaml")
    args = parser.parse_args()
    summary_path = Path(args.out) / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"rare_class_iou: {summary_path}: not found; run bench/toy_methods.py")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))["results"]
    names, counts = source_class_pixels(args.source_config)
    print(rare_class_table(summary, args.labels, names, counts, args.classes))


if __name__ == "__main__":
    main()

"""Pseudo-label quality against the target ground truth: a diagnostic, never a training input.

Reads a folder written by `udaseg pseudo-label` (or a recipe's pseudo-label stage) and the
labelled target train split it was made from, and prints per class: the fraction of the pixels
predicted as the class that the policy kept (from summary.json), the accuracy (precision) of the
kept pixels, and the share of the class's true pixels that received the right pseudo label
(recall). Nothing here feeds back into training or selection: the toy benchmark ships labels for
its target train split, which is what makes this measurable.

    python bench/pseudo_label_quality.py runs/st/toy_self_training/seed0/pseudo_labels \
        [--config toy/source_only.yaml] [--json quality.json]

The config names the target train split (`data.target`); by default the one in the folder's
summary.json (its checkpoints' config) is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from udaseg.config import apply_overrides, config_from_dict, load_config
from udaseg.data.datasets import build_dataset
from udaseg.data.io import read_label
from udaseg.data.label_spaces import get_label_space
from udaseg.engine.checkpoint import read_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("labels", help="folder written by `udaseg pseudo-label`")
    parser.add_argument("--config", help="config whose data.target is the labelled split")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    folder = Path(args.labels)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    if args.config:
        config = load_config(args.config)
    else:
        checkpoint = summary["checkpoints"][0]
        checkpoint = checkpoint["path"] if isinstance(checkpoint, dict) else checkpoint
        raw = read_checkpoint(checkpoint)["config"]
        config = config_from_dict(apply_overrides(raw, summary.get("overrides") or []))
    label_space = get_label_space(config.data.label_space)
    # The target train split read WITH its labels: the diagnostic needs them, training never.
    target = dataclasses.replace(
        config.data.target, resize=None, random_scale=None, crop=None, flip=False
    )
    if hasattr(target, "pseudo_labels"):
        target = dataclasses.replace(target, pseudo_labels=None)
    dataset = build_dataset(target, label_space, "val")

    classes = label_space.num_classes
    kept = np.zeros(classes, np.int64)  # pixels pseudo-labelled c
    correct = np.zeros(classes, np.int64)  # ... whose true class is c
    truth = np.zeros(classes, np.int64)  # pixels whose true class is c
    for index in range(len(dataset)):
        sample = dataset[index]
        label = sample["label"].numpy()
        pseudo = read_label(folder / f"{sample['name']}.png")
        valid = label != label_space.ignore_index
        kept += np.bincount(pseudo[pseudo < classes], minlength=classes)
        hits = (pseudo == label) & valid
        correct += np.bincount(label[hits], minlength=classes)
        truth += np.bincount(label[valid], minlength=classes)

    kept_fraction = summary.get("kept_fraction") or {}
    rows = []
    for class_id, name in enumerate(label_space.class_names):
        precision = correct[class_id] / kept[class_id] if kept[class_id] else float("nan")
        recall = correct[class_id] / truth[class_id] if truth[class_id] else float("nan")
        fraction = kept_fraction.get(name) if isinstance(kept_fraction, dict) else None
        rows.append(
            {
                "class": name,
                "kept_fraction": fraction,
                "accuracy_of_kept": precision,
                "recall": recall,
                "true_pixels": int(truth[class_id]),
                "kept_pixels": int(kept[class_id]),
            }
        )
    total_kept = int(kept.sum())
    overall = {
        "images": len(dataset),
        "accuracy_of_kept": float(correct.sum() / total_kept) if total_kept else float("nan"),
        "kept_share_of_labelled_pixels": float(total_kept / truth.sum()),
        "policy": summary.get("policy"),
        "options": summary.get("options"),
    }
    print("| class | kept fraction | accuracy of kept | recall | true px | kept px |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        fraction = "-" if row["kept_fraction"] is None else f"{100 * row['kept_fraction']:.1f}%"
        print(
            f"| {row['class']} | {fraction} | {100 * row['accuracy_of_kept']:.1f}% | "
            f"{100 * row['recall']:.1f}% | {row['true_pixels']} | {row['kept_pixels']} |"
        )
    print(
        f"overall: {overall['images']} images, accuracy of kept pixels "
        f"{100 * overall['accuracy_of_kept']:.1f}%, kept {100 * overall['kept_share_of_labelled_pixels']:.1f}% "
        "of the labelled pixels"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"classes": rows, "overall": overall}, indent=2), encoding="utf-8"
        )


if __name__ == "__main__":
    main()

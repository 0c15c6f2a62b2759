"""bench/rare_class_iou.py: which classes count as rarest, and their mean ± std IoU per label."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "rare_class_iou.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("rare_class_iou", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rarest_present_classes_with_mean_and_std() -> None:
    script = _load_script()
    names = ["road", "wall", "pole", "train"]
    # train is absent from the source: it cannot be a "rare" class, it is not there at all.
    counts = np.array([700, 100, 200, 0])
    summary = {
        "round0": {
            "runs": [
                {"per_class_iou": [0.5, 0.10, 0.30, 0.0]},
                {"per_class_iou": [0.5, 0.20, 0.50, 0.0]},
            ]
        }
    }
    table = script.rare_class_table(summary, ["round0"], names, counts, 2).splitlines()
    assert table[0] == "| label | wall (10.00% of source pixels) | pole (20.00% of source pixels) |"
    # wall: 10 and 20 -> 15.00 ± 7.07 (sample std); pole: 30 and 50 -> 40.00 ± 14.14.
    assert table[2] == "| round0 | 15.00 ± 7.07 | 40.00 ± 14.14 |"

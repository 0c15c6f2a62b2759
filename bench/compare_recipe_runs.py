"""Are two runs of the same recipe identical? Checkpoints, optimizer states and pseudo labels.

Used to show that a recipe killed at several points and run again ends exactly as an
uninterrupted run (the toy-size version of tests/test_recipes.py):

    python bench/compare_recipe_runs.py runs/st/toy_self_training/seed0 runs/st_killed

Every stage recorded in the first directory's `stages/` is compared: a train stage's final
weights and optimizer state tensor by tensor, a pseudo-label stage's PNGs byte by byte and its
summary's thresholds and counts. Prints one line per stage and exits 1 on any difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from udaseg.engine.checkpoint import read_checkpoint

SUMMARY_NUMBERS = ("thresholds", "predicted_pixels", "labelled_pixels", "kept_fraction")


def _tensors_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(first[key], second[key]) if torch.is_tensor(first[key]) else True
        for key in first
    )


def compare_train(first: Path, second: Path) -> tuple[bool, str]:
    a = read_checkpoint(first / "checkpoints" / "last.pt")
    b = read_checkpoint(second / "checkpoints" / "last.pt")
    modules = all(_tensors_equal(state, b["modules"][name]) for name, state in a["modules"].items())
    optimizers = all(
        _tensors_equal(slots, b["optimizers"][name]["state"][key])
        for name, optimizer in a["optimizers"].items()
        for key, slots in optimizer["state"].items()
    )
    same = modules and optimizers and a["step"] == b["step"]
    return (
        same,
        f"weights {'identical' if modules else 'DIFFER'}, optimizer state {'identical' if optimizers else 'DIFFERS'}, step {a['step']}/{b['step']}",
    )


def compare_pseudo_labels(first: Path, second: Path) -> tuple[bool, str]:
    names = sorted(path.relative_to(first) for path in first.rglob("*.png"))
    others = sorted(path.relative_to(second) for path in second.rglob("*.png"))
    differing = [
        name for name in names if (first / name).read_bytes() != (second / name).read_bytes()
    ]
    summary = json.loads((first / "summary.json").read_text(encoding="utf-8"))
    other = json.loads((second / "summary.json").read_text(encoding="utf-8"))
    numbers = all(summary[key] == other[key] for key in SUMMARY_NUMBERS)
    same = names == others and not differing and numbers
    return (
        same,
        f"{len(names)} PNGs, {len(differing)} differ, file lists {'equal' if names == others else 'DIFFER'}, summary numbers {'identical' if numbers else 'DIFFER'}",
    )


def main() -> int:
    first, second = Path(sys.argv[1]), Path(sys.argv[2])
    all_same = True
    for marker in sorted((first / "stages").glob("*.json")):
        record = json.loads(marker.read_text(encoding="utf-8"))
        stage = record["stage"]
        compare = compare_train if record["kind"] == "train" else compare_pseudo_labels
        same, text = compare(first / stage, second / stage)
        all_same &= same
        print(f"{stage} ({record['kind']}): {text}")
    print("identical" if all_same else "DIFFERENT")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())

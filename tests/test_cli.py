"""End to end through the CLI on a small toy benchmark: make-toy -> train -> eval -> predict -> score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udaseg.cli import main
from udaseg.engine.checkpoint import read_checkpoint

TINY = [
    "model.width=4",
    "train.steps=3",
    "train.checkpoint_every=3",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "data.batch_size=2",
    "data.num_workers=0",
]


# A toy benchmark small enough for the end-to-end tests.
TINY_TOY = "--size 64x128 --num-source 8 --num-target 6 --num-val 4 --workers 1".split()


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "bench"
    code = main(["make-toy", "--out", str(root), *TINY_TOY])
    assert code == 0
    return root


def roots(toy: Path, source: str = "source") -> list[str]:
    return [
        f"data.source.root={toy / source}",
        f"data.target.root={toy / 'target'}",
        f"data.val.root={toy / 'target'}",
    ]


@pytest.fixture(scope="module")
def trained(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "source_only"
    assert main(["train", "toy/source_only.yaml", *roots(toy), *TINY, f"run_dir={run_dir}"]) == 0
    return run_dir


def test_train_writes_a_run(trained: Path) -> None:
    assert (trained / "checkpoints" / "last.pt").is_file()
    final = json.loads((trained / "eval" / "final.json").read_text())
    assert final["num_images"] == 4
    assert 0.0 <= final["miou"]["mIoU19"] <= 1.0
    assert (trained / "config.yaml").read_text().startswith("seed: 0")


def test_eval_checkpoint_matches_training_eval(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "checkpoints" / "last.pt"),
                "--json",
                str(output),
            ]
        )
        == 0
    )
    again = json.loads(output.read_text())
    final = json.loads((trained / "eval" / "final.json").read_text())
    assert again["miou"] == final["miou"]


def test_predict_then_score_equals_eval(trained: Path, toy: Path, tmp_path: Path) -> None:
    checkpoint = str(trained / "checkpoints" / "last.pt")
    val_images = toy / "target" / "leftImg8bit" / "val"
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                checkpoint,
                str(val_images),
                "--out",
                str(out),
                "--label-ids",
            ]
        )
        == 0
    )
    labels = sorted((out / "labels").rglob("*.png"))
    assert len(labels) == 4
    assert len(list((out / "color").rglob("*.png"))) == 4
    overlay = np.asarray(Image.open(next((out / "overlay").rglob("*.png"))))
    assert overlay.shape == (64, 128, 3)
    scores = tmp_path / "scores.json"
    assert (
        main(
            [
                "score",
                str(out / "labels"),
                str(toy / "target"),
                "--format",
                "labelIds",
                "--json",
                str(scores),
            ]
        )
        == 0
    )
    scored = json.loads(scores.read_text())
    final = json.loads((trained / "eval" / "final.json").read_text())
    # Same predictions, two paths: the evaluator in the loop and the folder scorer.
    assert scored["miou"]["mIoU19"] == pytest.approx(final["miou"]["mIoU19"], abs=1e-9)
    # A second predict into the same folder does not overwrite without --overwrite.
    assert main(["predict", "--checkpoint", checkpoint, str(val_images), "--out", str(out)]) == 2


def test_eval_released_layout_weights(trained: Path, toy: Path, tmp_path: Path) -> None:
    """A bare state_dict in the released key layout (no num_batches_tracked) scores the same."""
    state = read_checkpoint(trained / "checkpoints" / "last.pt")["modules"]["segmentor"]
    released = {
        key: value for key, value in state.items() if not key.endswith("num_batches_tracked")
    }
    assert "layer5.conv2d_list.0.weight" in released and "conv1.weight" in released
    torch.save(released, tmp_path / "released.pth")
    output = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "toy/source_only.yaml",
            *roots(toy),
            "model.width=4",
            "--weights",
            str(tmp_path / "released.pth"),
            "--json",
            str(output),
        ]
    )
    assert code == 0
    final = json.loads((trained / "eval" / "final.json").read_text())
    assert json.loads(output.read_text())["miou"] == final["miou"]


def test_bad_input_is_one_line(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "toy/source_only.yaml", "train.stepz=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "train.stepz" in error and "valid keys" in error
    assert (
        main(
            [
                "train",
                "toy/source_only.yaml",
                f"data.source.root={tmp_path / 'nowhere'}",
                *TINY,
                f"run_dir={tmp_path / 'r'}",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "nowhere" in error and "expected images/" in error
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err


def test_demo_on_a_given_toy_dir(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    settings = [
        item
        for override in [
            "model.width=4",
            "train.steps=2",
            "data.batch_size=2",
            "data.num_workers=0",
            "train.progress_bar=false",
            "train.tensorboard=false",
        ]
        for item in ("--set", override)
    ]
    assert main(["demo", "--toy-dir", str(toy), "--out", str(out), *settings]) == 0
    printed = capsys.readouterr().out
    assert "source-only" in printed and "target oracle" in printed and "domain gap" in printed
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary) == {"source-only", "target oracle"}
    # A second demo reuses the finished runs instead of training again.
    assert main(["demo", "--toy-dir", str(toy), "--out", str(out), *settings]) == 0
    assert "reusing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def toy_synthia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy_synthia") / "bench"
    assert main(["make-toy", "--out", str(root), "--layout", "synthia", *TINY_TOY]) == 0
    return root


@pytest.mark.parametrize(
    ("config", "convention", "num_classes"),
    [
        ("toy/source_only_synthia.yaml", "count", 19),
        ("toy/source_only_synthia16.yaml", "ignore", 16),
    ],
)
def test_synthia_layout_and_both_miou16_conventions(
    toy_synthia: Path, tmp_path: Path, config: str, convention: str, num_classes: int
) -> None:
    """16-bit SYNTHIA labels are read and scored with mIoU16/13 under the chosen convention."""
    overrides = [
        f"data.source.root={toy_synthia / 'source'}",
        f"data.target.root={toy_synthia / 'target'}",
        f"data.val.root={toy_synthia / 'target'}",
    ]
    assert main(["train", config, *overrides, *TINY, f"run_dir={tmp_path / 'run'}"]) == 0
    final = json.loads((tmp_path / "run" / "eval" / "final.json").read_text())
    assert {"mIoU16", "mIoU13"} <= set(final["miou"])
    assert final["subsets"]["mIoU16"]["gt_of_other_classes"] == convention
    assert len(final["class_names"]) == num_classes
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["model_facts"]["label_space"] == (
        "cityscapes19" if num_classes == 19 else "synthia16"
    )
    assert checkpoint["modules"]["segmentor"]["layer5.conv2d_list.0.bias"].shape == (num_classes,)

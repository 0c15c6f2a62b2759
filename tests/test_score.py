"""`udaseg score`: equality with cityscapesScripts, format detection, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udaseg.cli import main
from udaseg.data.label_spaces import CITYSCAPES_CLASSES

GT = "_gtFine_labelIds.png"


def write_png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def one_image_layout(tmp_path: Path, prediction, name: str = "pred.png") -> tuple[Path, Path]:
    """A Cityscapes root with one 2x4 GT image, and a prediction folder."""
    # GT labelIds: road road sidewalk sidewalk / car car unlabeled unlabeled
    write_png(
        tmp_path / "cs/gtFine/val/aachen" / f"aachen_000000_000019{GT}",
        [[7, 7, 8, 8], [26, 26, 0, 0]],
    )
    write_png(tmp_path / "pred/aachen" / f"aachen_000000_000019_{name}", prediction)
    return tmp_path / "pred", tmp_path / "cs"


# road: TP 2, FN 0, FP 1 (a sidewalk pixel)       -> 2/3
# sidewalk: TP 1, FN 1 (predicted road)          -> 1/2
# car: TP 1, FN 1 (predicted void); car predicted on unlabeled GT is no FP -> 1/2
EXPECTED_MIOU = (2 / 3 + 1 / 2 + 1 / 2) / 3


@pytest.mark.parametrize(
    "prediction, expected_format",
    [
        ([[0, 0, 0, 1], [13, 255, 13, 13]], "trainIds"),
        ([[7, 7, 7, 8], [26, 0, 26, 26]], "labelIds"),
    ],
)
def test_hand_computed_miou(tmp_path, capsys, prediction, expected_format):
    pred, gt = one_image_layout(tmp_path, prediction)
    output = tmp_path / "result.json"
    assert main(["score", str(pred), str(gt), "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"prediction format: {expected_format}" in printed
    assert "1 images scored" in printed and "mIoU16:" in printed
    result = json.loads(output.read_text())
    assert result["miou"]["mIoU19"] == pytest.approx(EXPECTED_MIOU)
    assert result["miou"]["mIoU16"] == pytest.approx(EXPECTED_MIOU)  # all three are in it
    assert list(result["miou"]) == ["mIoU19", "mIoU16", "mIoU13"]
    iou = dict(zip(result["class_names"], result["per_class_iou"], strict=True))
    assert iou["road"] == pytest.approx(2 / 3) and iou["car"] == pytest.approx(1 / 2)
    assert iou["sky"] is None
    assert result["num_images"] == 1 and result["protocol"]["prediction_format"] == expected_format


def test_equal_to_cityscapes_scripts(tmp_path, monkeypatch):
    # Installed by the Makefile (without its Python-2 `typing` pin): the reference, never skipped.
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as evaluator

    generator = np.random.default_rng(0)
    gt_files, prediction_files = [], []
    for index, city in enumerate(["aachen", "bremen", "aachen"]):
        stem = f"{city}_00000{index}_0000{index}9"
        # GT over all labelIds 0..33, predictions too: ignored ids (0, 4, 9, ...) included.
        gt = generator.integers(0, 34, size=(12, 20))
        prediction = np.where(
            generator.random((12, 20)) < 0.4, gt, generator.integers(0, 34, (12, 20))
        )
        prediction[0, :3] = [0, 4, 9]
        gt_files.append(str(write_png(tmp_path / "gt" / city / f"{stem}{GT}", gt)))
        prediction_files.append(
            str(write_png(tmp_path / "pred" / f"{stem}_leftImg8bit.png", prediction))
        )

    for key, value in {
        "quiet": True,
        "JSONOutput": False,
        "evalInstLevelScore": False,
        "evalPixelAccuracy": False,
    }.items():
        monkeypatch.setattr(evaluator.args, key, value, raising=False)
    official = evaluator.evaluateImgLists(prediction_files, gt_files, evaluator.args)["classScores"]

    output = tmp_path / "ours.json"
    code = main(["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(output)])
    assert code == 0
    ours = json.loads(output.read_text())
    assert ours["protocol"]["prediction_format"] == "labelIds"
    for name, iou in zip(ours["class_names"], ours["per_class_iou"], strict=True):
        assert iou == pytest.approx(official[name], abs=1e-9), name
    assert set(ours["class_names"]) == set(CITYSCAPES_CLASSES)
    valid = [official[name] for name in CITYSCAPES_CLASSES]
    assert ours["miou"]["mIoU19"] == pytest.approx(np.nanmean(valid), abs=1e-9)


def test_ground_truth_layouts(tmp_path, capsys):
    pred, gt = one_image_layout(tmp_path, [[0, 0, 0, 1], [13, 255, 13, 13]])
    for folder in (gt, gt / "gtFine", gt / "gtFine/val", gt / "gtFine/val/aachen"):
        output = tmp_path / "layout.json"
        argv = ["score", str(pred), str(folder), "--json", str(output), "--overwrite"]
        assert main(argv) == 0, folder
        assert json.loads(output.read_text())["miou"]["mIoU19"] == pytest.approx(EXPECTED_MIOU)
    assert main(["score", str(pred), str(gt), "--format", "trainIds", "--split", "val"]) == 0


def error_of(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message
    return message


def test_missing_and_duplicate_predictions(tmp_path, capsys):
    pred, gt = one_image_layout(tmp_path, [[0, 0, 0, 1], [13, 255, 13, 13]])
    gt_file = f"bremen_000001_000002{GT}"
    write_png(gt / "gtFine/val/bremen" / gt_file, [[7, 7, 7, 7], [7, 7, 7, 7]])
    message = error_of(capsys, ["score", str(pred), str(gt)])
    assert (
        message.startswith("udaseg score: error: no prediction for ground truth")
        and gt_file in message
    )

    write_png(pred / "bremen_000001_000002_a.png", np.zeros((2, 4)))
    write_png(pred / "other/bremen_000001_000002_b.png", np.zeros((2, 4)))
    assert "several predictions" in error_of(capsys, ["score", str(pred), str(gt)])


def test_data_errors(tmp_path, capsys):
    pred, gt = one_image_layout(tmp_path, [[0, 0, 0], [13, 255, 13]])
    message = error_of(capsys, ["score", str(pred), str(gt)])
    assert "aachen_000000_000019_pred.png" in message and "3x2" in message and "4x2" in message

    (pred / "aachen/aachen_000000_000019_pred.png").write_bytes(b"not a png")
    assert "unreadable prediction PNG" in error_of(capsys, ["score", str(pred), str(gt)])

    message = error_of(capsys, ["score", str(pred), str(tmp_path / "pred")])
    assert "no *_gtFine_labelIds.png files" in message and "expected" in message
    assert "no gtFine/test folder" in error_of(
        capsys, ["score", str(pred), str(gt), "--split", "test"]
    )


def test_format_decisions(tmp_path, capsys):
    # Only values valid in both formats (road/sidewalk labelIds, or train ids 0/7/8): ask.
    pred, gt = one_image_layout(tmp_path, [[7, 7, 0, 8], [0, 0, 7, 8]])
    assert "--format" in error_of(capsys, ["score", str(pred), str(gt)])
    assert main(["score", str(pred), str(gt), "--format", "labelIds"]) == 0
    capsys.readouterr()
    # Train ids cannot hold 26.
    pred, gt = one_image_layout(tmp_path / "b", [[0, 0, 0, 1], [26, 255, 13, 13]])
    assert "not a trainIds value" in error_of(
        capsys, ["score", str(pred), str(gt), "--format", "trainIds"]
    )
    # 100 is in no format.
    pred, gt = one_image_layout(tmp_path / "c", [[0, 0, 0, 1], [100, 255, 13, 13]])
    assert "holds 100" in error_of(capsys, ["score", str(pred), str(gt)])

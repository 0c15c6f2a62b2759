"""Confusion matrix, IoU conventions and reports, against numbers computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from udaseg.data.label_spaces import CITYSCAPES19, EvalSubset, LabelSpace
from udaseg.evaluation.metrics import ConfusionMatrix, EvaluationResult
from udaseg.evaluation.report import format_table, write_json

V = 255  # void

TINY = LabelSpace(
    name="tiny",
    class_names=("a", "b", "c", "d"),
    palette=((0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)),
    subsets=(
        EvalSubset("all", (0, 1, 2, 3), "count", "every class"),
        EvalSubset("ab-count", (0, 1), "count", "a and b, GT of c/d counted"),
        EvalSubset("ab-ignore", (0, 1), "ignore", "a and b, GT of c/d void"),
    ),
)


def test_counts_and_iou_by_hand():
    labels = torch.tensor([[0, 0, 1], [1, 2, V]])
    predictions = torch.tensor([[0, 1, 1], [V, 2, 0]], dtype=torch.uint8)
    matrix = ConfusionMatrix(4)
    matrix.update(predictions, labels)
    # (GT, pred) pairs: (0,0) (0,1) (1,1) (1,void) (2,2); the void GT pixel is dropped.
    expected = [
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 1],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert matrix.counts.tolist() == expected
    assert matrix.num_images == 1
    result = matrix.compute(TINY)
    # a: TP 1, FN 1 (predicted b), FP 0                      -> 1/2
    # b: TP 1, FN 1 (predicted void), FP 1 (GT a predicted b) -> 1/3
    # c: TP 1, FN 0, FP 0                                     -> 1
    # d: absent from GT and predictions                        -> NaN, skipped by the mean
    assert result.per_class_iou[:3] == pytest.approx([1 / 2, 1 / 3, 1.0])
    assert math.isnan(result.per_class_iou[3])
    assert result.miou["all"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert result.pixel_accuracy == pytest.approx(3 / 5)


def test_predictions_outside_range_and_void_gt_never_false_positives():
    # GT void under a prediction of class 0 must not hurt class 0; a prediction of 7 (outside
    # 0..3) and of -1 are misses for their GT class.
    labels = torch.tensor([V, V, 0, 1, 1])
    predictions = torch.tensor([0, 0, 0, 7, -1])
    matrix = ConfusionMatrix(4)
    matrix.update(predictions[None], labels[None])
    assert matrix.counts[:, 4].tolist() == [0, 2, 0, 0]
    result = matrix.compute(TINY, ["all"])
    assert result.per_class_iou[0] == 1.0  # TP 1, FP 0, FN 0
    assert result.per_class_iou[1] == 0.0  # TP 0, FN 2
    assert math.isnan(result.per_class_iou[2])
    assert result.miou["all"] == pytest.approx(0.5)


def test_subset_conventions_differ():
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    predictions = torch.tensor([[0, 0, 1, 0, 0, 2]])
    matrix = ConfusionMatrix(4)
    matrix.update(predictions, labels)
    result = matrix.compute(TINY)
    # Full matrix: a TP 2, FP 2 (GT b and GT c predicted a) -> 2/4; b TP 1, FN 1 -> 1/2;
    # c TP 1, FN 1 -> 1/2.
    assert result.per_class_iou[:3] == pytest.approx([0.5, 0.5, 0.5])
    assert result.miou["ab-count"] == pytest.approx(0.5)
    # "ignore": GT c is void, so a loses that FP: TP 2, FP 1 -> 2/3; b stays 1/2.
    assert result.miou["ab-ignore"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result.subset_per_class_iou["ab-ignore"][:2] == pytest.approx([2 / 3, 1 / 2])
    assert math.isnan(result.subset_per_class_iou["ab-ignore"][2])
    assert result.subsets["ab-ignore"]["gt_of_other_classes"] == "ignore"
    assert "ab-count" not in result.subset_per_class_iou


def test_incremental_equals_one_shot_and_merge():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (6, 7, 9), generator=generator)
    labels[labels == 4] = V
    predictions = torch.randint(-1, 5, (6, 7, 9), generator=generator)
    one_shot = ConfusionMatrix(4)
    one_shot.update(predictions, labels)
    incremental = ConfusionMatrix(4)
    for index in range(6):
        incremental.update(predictions[index], labels[index])
    assert torch.equal(one_shot.counts, incremental.counts)
    assert incremental.num_images == one_shot.num_images == 6

    first, second = ConfusionMatrix(4), ConfusionMatrix(4)
    first.update(predictions[:2], labels[:2])
    second.update(predictions[2:], labels[2:])
    assert torch.equal(first.merge(second).counts, one_shot.counts)
    assert first.num_images == 6
    assert int(one_shot.counts.sum()) == int((labels != V).sum())
    one_shot.reset()
    assert int(one_shot.counts.sum()) == 0 and one_shot.num_images == 0


def test_all_reduce_single_process(tmp_path):
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    before = matrix.counts.clone()
    matrix.all_reduce()  # no process group: no-op
    assert torch.equal(matrix.counts, before)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        matrix.all_reduce()
    finally:
        torch.distributed.destroy_process_group()
    assert torch.equal(matrix.counts, before) and matrix.num_images == 1


def test_result_round_trip_json_safe(tmp_path):
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    result = matrix.compute(TINY)
    result.protocol = {"input_size": (512, 1024), "flip": False}
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)  # NaN would raise here
    # a: TP 1, FN 1 -> 1/2; b: FP 1 -> 0; c, d: NaN -> None.
    assert data["per_class_iou"] == [0.5, 0.0, None, None]
    assert data["protocol"]["input_size"] == [512, 1024]
    back = EvaluationResult.from_dict(json.loads(text))
    assert back.per_class_iou[:2] == [0.5, 0.0] and math.isnan(back.per_class_iou[2])
    assert back.miou == pytest.approx(result.miou, nan_ok=True)
    assert back.subsets == result.subsets

    path = tmp_path / "sub" / "result.json"
    write_json(path, {"model": result})
    assert json.loads(path.read_text())["model"]["label_space"] == "tiny"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp file left


def test_format_table_prints_every_convention():
    matrix = ConfusionMatrix(19)
    matrix.update(torch.arange(19)[None], torch.arange(19)[None])
    full = matrix.compute(CITYSCAPES19, ["mIoU19", "mIoU16", "mIoU13"])
    sixteen = matrix.compute(CITYSCAPES19, ["mIoU16"])
    table = format_table({"source-only": full, "oracle": sixteen})
    lines = table.splitlines()
    assert lines[0].split() == ["class", "source-only", "oracle"]
    terrain = next(line for line in lines if line.startswith("terrain"))
    assert terrain.split() == ["terrain", "100.0", "-"]  # outside the oracle's subsets
    assert next(line for line in lines if line.startswith("mIoU13")).split() == [
        "mIoU13",
        "100.0",
        "-",
    ]
    footnotes = [line.strip() for line in lines if line.startswith("  ")]
    assert any(note.startswith("mIoU16:") and "BDL/FDA" in note for note in footnotes)
    assert any(note.startswith("mIoU19:") for note in footnotes)
    assert any(note.startswith("mIoU13:") for note in footnotes)


def test_write_json_of_plain_data_and_lists_of_results(tmp_path):
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    result = matrix.compute(TINY)
    path = tmp_path / "runs.json"
    write_json(path, {"seeds": [result, result], "spread": float("nan"), "size": (2, 3)})
    data = json.loads(path.read_text())
    assert data["seeds"][1]["per_class_iou"] == [0.5, 0.0, None, None]
    assert data["spread"] is None and data["size"] == [2, 3]

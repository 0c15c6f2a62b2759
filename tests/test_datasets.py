"""Dataset readers on tiny files in each real layout, with hand-written expected train ids."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.fake_layouts import (
    gta5_palette,
    write_camvid,
    write_cityscapes,
    write_folder,
    write_gta5,
    write_pseudo_labels,
    write_synthia,
)
from udaseg.data.datasets import build_dataset
from udaseg.data.io import read_label, write_palettised_png, write_png
from udaseg.errors import ConfigError, DataError
from udaseg.registry import DATASETS

# REFERENCE §4.1/§4.2, written out by hand: Cityscapes labelId -> train id (others are void).
TRAIN_ID_OF_LABEL_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def _expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda value: TRAIN_ID_OF_LABEL_ID.get(int(value), 255))(label_ids)


def _build(kind: str, root, role: str = "source", label_space: str = "cityscapes19", **fields):
    config = {"kind": kind, "root": str(root), **fields}
    return build_dataset(config, label_space, role)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _message(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_every_layout_is_registered():
    assert {"gta5", "synthia", "cityscapes", "camvid", "folder"} <= set(DATASETS.names())
    for kind in ("gta5", "synthia", "cityscapes", "camvid", "folder"):
        assert hasattr(DATASETS.get(kind), "Config")


# --- GTA5 ------------------------------------------------------------------------------------


def test_gta5_palettised_label_values_are_label_ids(tmp_path):
    root = tmp_path / "GTA5"
    image = _image(2, 4)
    write_png(root / "images" / "00001.png", image)
    raw = np.array([[7, 8, 34, 0], [26, 33, 11, 24]], dtype=np.uint8)
    write_palettised_png(root / "labels" / "00001.png", raw, gta5_palette())
    dataset = _build("gta5", root)
    sample = dataset[0]
    assert set(sample) == {"image", "label", "name", "index"}
    assert sample["name"] == "00001" and sample["index"] == 0
    assert str(sample["image"].dtype) == "torch.uint8" and tuple(sample["image"].shape) == (3, 2, 4)
    np.testing.assert_array_equal(sample["image"].numpy(), image.transpose(2, 0, 1))
    assert str(sample["label"].dtype) == "torch.int64"
    np.testing.assert_array_equal(sample["label"].numpy(), [[0, 1, 255, 255], [13, 18, 2, 11]])


def test_gta5_fake_layout_against_the_hand_table(tmp_path):
    layout = write_gta5(tmp_path / "GTA5", count=2, size=(12, 16), seed=1)
    dataset = _build("gta5", layout.root)
    assert dataset.names == ["00001", "00002"]
    for index, name in enumerate(dataset.names):
        sample = dataset[index]
        expected = _expected_train_ids(layout.labels[name])
        np.testing.assert_array_equal(sample["label"].numpy(), expected)
        np.testing.assert_array_equal(
            sample["image"].numpy(), layout.images[name].transpose(2, 0, 1)
        )
    assert len(np.unique(dataset[0]["label"].numpy())) > 4  # a real mix, void included
    assert 255 in dataset[0]["label"].numpy()


def test_gta5_label_of_another_size_is_resized_nearest(tmp_path):
    root = tmp_path / "GTA5"
    write_png(root / "images" / "00001.png", _image(4, 4))
    write_palettised_png(
        root / "labels" / "00001.png", np.array([[7, 8], [26, 33]]), gta5_palette()
    )
    write_png(root / "images" / "00002.png", _image(2, 2))
    write_palettised_png(root / "labels" / "00002.png", np.array([[7, 7], [7, 7]]), gta5_palette())
    dataset = _build("gta5", root)
    expected = [[0, 0, 1, 1], [0, 0, 1, 1], [13, 13, 18, 18], [13, 13, 18, 18]]
    for _ in range(2):  # deterministic
        np.testing.assert_array_equal(dataset[0]["label"].numpy(), expected)
    dataset[1]
    assert dataset.resized_labels == {"00001"}
    assert dataset.find_size_mismatches() == ["00001"]


def test_gta5_fake_writer_mismatched_pairs(tmp_path):
    layout = write_gta5(tmp_path / "GTA5", count=3, size=(8, 12), mismatched=[2])
    dataset = _build("gta5", layout.root)
    assert layout.labels["00002"].shape == (12, 18)
    assert tuple(dataset[1]["label"].shape) == (8, 12)
    assert dataset.find_size_mismatches() == ["00002"]


# --- SYNTHIA ---------------------------------------------------------------------------------


def _write_synthia_sample(root, class_ids: np.ndarray, labels_dir: str | None = None) -> None:
    height, width = class_ids.shape
    write_png(root / "RGB" / "0000000.png", _image(height, width))
    label = np.zeros((height, width, 3), dtype=np.uint16)
    label[:, :, 0] = class_ids
    label[:, :, 1] = 1000 + np.arange(height * width).reshape(height, width) * 300
    label[:, :, 2] = 65535
    write_png(root / "GT" / "LABELS" / "0000000.png", label)
    if labels_dir is not None:
        write_png(root / labels_dir / "0000000.png", class_ids.astype(np.uint8))


def test_synthia_class_id_is_the_first_16_bit_channel(tmp_path):
    root = tmp_path / "SYNTHIA"
    # lane marking (22) is void, road (3) -> 0, car (8) -> 13, void (0), wall (21) -> 3,
    # pedestrian (10) -> person (11).
    _write_synthia_sample(root, np.array([[22, 3, 8], [0, 21, 10]]))
    sample = _build("synthia", root)[0]
    assert sample["name"] == "0000000"
    np.testing.assert_array_equal(sample["label"].numpy(), [[255, 0, 13], [255, 3, 11]])


def test_synthia_mapped_to_cityscapes_folder_holds_synthia_ids(tmp_path):
    root = tmp_path / "SYNTHIA"
    _write_synthia_sample(root, np.array([[22, 3, 8], [0, 21, 10]]), "synthia_mapped_to_cityscapes")
    shutil.rmtree(root / "GT")  # must read the other folder
    dataset = _build("synthia", root, labels_dir="synthia_mapped_to_cityscapes")
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), [[255, 0, 13], [255, 3, 11]])


def test_synthia_into_the_16_class_space(tmp_path):
    root = tmp_path / "SYNTHIA"
    # sky (1) -> 9, terrain (16) -> void (no terrain in 16 classes), bus (19) -> 13,
    # car (8) -> 12, bicycle (11) -> 15, lane marking (22) -> void.
    _write_synthia_sample(root, np.array([[1, 16, 19], [8, 11, 22]]))
    dataset = _build("synthia", root, label_space="synthia16")
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), [[9, 255, 13], [12, 15, 255]])


def test_synthia_fake_layout(tmp_path):
    layout = write_synthia(tmp_path / "SYNTHIA", count=2, size=(8, 12), seed=2)
    dataset = _build("synthia", layout.root)
    synthia_to_train_id = {1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11}
    synthia_to_train_id |= {11: 18, 12: 17, 15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3}
    for index, name in enumerate(dataset.names):
        expected = np.vectorize(lambda v: synthia_to_train_id.get(int(v), 255))(layout.labels[name])
        np.testing.assert_array_equal(dataset[index]["label"].numpy(), expected)


# --- Cityscapes ------------------------------------------------------------------------------


def test_cityscapes_label_ids_and_train_ids(tmp_path):
    layouts = write_cityscapes(tmp_path / "cityscapes", {"train": 3, "val": 1}, size=(8, 16))
    for label_type in ("labelIds", "labelTrainIds"):
        dataset = _build("cityscapes", tmp_path / "cityscapes", label_type=label_type)
        assert dataset.names == [
            "aachen/aachen_000000_000019_leftImg8bit",
            "aachen/aachen_000002_000021_leftImg8bit",
            "bremen/bremen_000001_000020_leftImg8bit",
        ]
        for index, name in enumerate(dataset.names):
            expected = _expected_train_ids(layouts["train"].labels[name])
            np.testing.assert_array_equal(dataset[index]["label"].numpy(), expected)


def test_cityscapes_val_resizes_the_image_and_keeps_the_label(tmp_path):
    write_cityscapes(tmp_path / "cs", {"val": 1}, size=(16, 32))
    config = {"kind": "cityscapes", "root": str(tmp_path / "cs"), "split": "val"}
    sample = build_dataset(config, "cityscapes19", "val", image_size=(8, 16))[0]
    assert tuple(sample["image"].shape) == (3, 8, 16)
    assert tuple(sample["label"].shape) == (16, 32)
    sample = build_dataset(config, "cityscapes19", "val", image_size=(8, 16), label_size=(4, 8))[0]
    assert tuple(sample["label"].shape) == (4, 8)


@pytest.mark.parametrize("key, value", [("crop", [4, 4]), ("flip", True), ("resize", [8, 8])])
def test_val_role_rejects_augmentation(tmp_path, key, value):
    write_cityscapes(tmp_path / "cs", {"val": 1}, size=(8, 16))
    config = {"kind": "cityscapes", "root": str(tmp_path / "cs"), "split": "val", key: value}
    with pytest.raises(ConfigError) as error:
        build_dataset(config, "cityscapes19", "val")
    message = _message(error)
    assert f"data.val.{key}" in message and "eval.input_size" in message


# --- CamVid ----------------------------------------------------------------------------------


def test_camvid_values_map_to_cityscapes(tmp_path):
    root = tmp_path / "CamVid"
    write_png(root / "val" / "0016E5_07959.png", _image(2, 3))
    raw = np.array([[0, 3, 11], [10, 6, 9]], dtype=np.uint8)  # sky road void / bicyclist sign ped
    write_png(root / "valannot" / "0016E5_07959.png", raw)
    sample = _build("camvid", root, role="val", split="val")[0]
    assert sample["name"] == "0016E5_07959"
    np.testing.assert_array_equal(sample["label"].numpy(), [[10, 0, 255], [18, 7, 11]])


def test_camvid_fake_layout_and_segnet_list_file(tmp_path):
    layouts = write_camvid(tmp_path / "CamVid", {"train": 3})
    names = layouts["train"].names
    list_file = tmp_path / "train.txt"
    list_file.write_text(
        "".join(f"/SegNet/CamVid/train/{n}.png /SegNet/CamVid/trainannot/{n}.png\n" for n in names)
    )
    dataset = _build("camvid", tmp_path / "CamVid", split="train", list_file=str(list_file))
    assert dataset.names == names
    camvid_to_train_id = {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11, 10: 18}
    expected = np.vectorize(lambda v: camvid_to_train_id.get(int(v), 255))(
        layouts["train"].labels[names[0]]
    )
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), expected)


# --- Folder ----------------------------------------------------------------------------------


def test_folder_with_mapping_yaml_jpeg_and_suffix(tmp_path):
    layout = write_folder(tmp_path / "mine", count=2, image_extension=".jpg", label_suffix="_mask")
    dataset = _build(
        "folder",
        layout.root,
        images="images",
        labels="labels",
        mapping="mapping.yaml",
        label_suffix="_mask",
    )
    assert dataset.names == ["img_0", "img_1"]
    to_train_id = {0: 0, 1: 1, 7: 13, 255: 255}  # road, sidewalk, car, ignore
    for index, name in enumerate(dataset.names):
        expected = np.vectorize(to_train_id.get)(layout.labels[name])
        np.testing.assert_array_equal(dataset[index]["label"].numpy(), expected)


def test_folder_mapping_by_train_id_and_loose_names_in_subfolders(tmp_path):
    root = tmp_path / "mine"
    write_png(root / "pics" / "street" / "a.png", _image(1, 4))
    write_png(root / "masks" / "street" / "a.png", np.array([[3, 4, 5, 6]], dtype=np.uint8))
    (root / "map.yaml").write_text(
        "label_space: cityscapes19\nvalues: {3: 13, 4: traffic_light, '5': Traffic Sign, 6: void}\n"
    )
    dataset = _build("folder", root, images="pics", labels="masks", mapping="map.yaml")
    assert dataset.names == ["street/a"]
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), [[13, 6, 7, 255]])
    # The same file mapped into the 16-class space: car is 12 there.
    dataset16 = _build(
        "folder", root, label_space="synthia16", images="pics", labels="masks", mapping="map.yaml"
    )
    np.testing.assert_array_equal(dataset16[0]["label"].numpy(), [[12, 6, 7, 255]])


def test_folder_without_mapping_reads_train_ids(tmp_path):
    root = tmp_path / "mine"
    write_png(root / "images" / "x.png", _image(1, 3))
    write_png(root / "labels" / "x.png", np.array([[0, 18, 255]], dtype=np.uint8))
    dataset = _build("folder", root, images="images", labels="labels")
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), [[0, 18, 255]])
    write_png(root / "labels" / "x.png", np.array([[0, 19, 255]], dtype=np.uint8))
    with pytest.raises(DataError) as error:
        dataset[0]
    assert str(root / "labels" / "x.png") in _message(error)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("values: {0: road, 1: roads}", "unknown class 'roads'"),
        ("values: {abc: road}", "'abc' is not a label value"),
        ("values: {-1: road}", "-1 is not a label value"),
        ("values: {0: 19}", "train id 19 is outside cityscapes19"),
        ("values: {0: [road]}", "expected a class name"),
        ("label_space: mapillary\nvalues: {0: road}", "unknown label space 'mapillary'"),
        ("label_space: cityscapes19", "values"),
        ("values: {0: road}\nclasses: 3", "unknown key 'classes'"),
        ("values: {0: road", ""),
        ("- road", "must be a YAML mapping"),
    ],
)
def test_folder_mapping_errors_name_the_file(tmp_path, text, problem):
    root = tmp_path / "mine"
    write_png(root / "images" / "x.png", _image(1, 1))
    write_png(root / "labels" / "x.png", np.zeros((1, 1), dtype=np.uint8))
    (root / "map.yaml").write_text(text)
    with pytest.raises(ConfigError) as error:
        _build("folder", root, images="images", labels="labels", mapping="map.yaml")
    message = _message(error)
    assert str(root / "map.yaml") in message
    assert problem in message


def test_folder_missing_mapping_file_and_missing_labels_key(tmp_path):
    root = tmp_path / "mine"
    write_png(root / "images" / "x.png", _image(1, 1))
    write_png(root / "labels" / "x.png", np.zeros((1, 1), dtype=np.uint8))
    with pytest.raises(ConfigError, match="label mapping file not found") as error:
        _build("folder", root, images="images", labels="labels", mapping="nope.yaml")
    assert "nope.yaml" in _message(error)
    with pytest.raises(ConfigError) as error:
        _build("folder", root, images="images")
    assert "data.source.labels" in _message(error)


def test_folder_label_value_outside_the_mapping(tmp_path):
    layout = write_folder(tmp_path / "mine", count=1)
    write_png(layout.files["img_0"][1], np.array([[0, 9]], dtype=np.uint8))
    write_png(layout.files["img_0"][0], _image(1, 2))
    dataset = _build(
        "folder", layout.root, images="images", labels="labels", mapping="mapping.yaml"
    )
    with pytest.raises(DataError) as error:
        dataset[0]
    message = _message(error)
    assert str(layout.files["img_0"][1]) in message and "[9]" in message


# --- Target role: labels are never needed ----------------------------------------------------


def _write_layout(kind: str, root):
    """Write a fake layout; return (dataset fields, label folders)."""
    if kind == "gta5":
        write_gta5(root, count=2, size=(8, 12))
        return {}, [root / "labels"]
    if kind == "synthia":
        write_synthia(root, count=2, size=(8, 12))
        return {}, [root / "GT"]
    if kind == "cityscapes":
        write_cityscapes(root, {"train": 2}, size=(8, 12))
        return {"split": "train"}, [root / "gtFine"]
    if kind == "camvid":
        write_camvid(root, {"train": 2}, size=(8, 12))
        return {"split": "train"}, [root / "trainannot"]
    write_folder(root, count=2, size=(8, 12))
    return {"images": "images", "labels": "labels", "mapping": "mapping.yaml"}, [root / "labels"]


@pytest.mark.parametrize("kind", ["gta5", "synthia", "cityscapes", "camvid", "folder"])
def test_target_role_neither_opens_nor_needs_labels(tmp_path, monkeypatch, kind):
    root = tmp_path / kind
    fields, label_folders = _write_layout(kind, root)
    for folder in label_folders:
        shutil.rmtree(folder)

    def forbidden(path, *args, **kwargs):
        raise AssertionError(f"label file opened: {path}")

    for module in ("base", "synthia"):
        monkeypatch.setattr(f"udaseg.data.datasets.{module}.read_label", forbidden)
    monkeypatch.setattr("udaseg.data.datasets.synthia.read_png16", forbidden)
    dataset = _build(kind, root, role="target", crop=[4, 6], flip=True, **fields)
    assert len(dataset) == 2
    sample = dataset[1]
    assert "label" not in sample
    assert tuple(sample["image"].shape) == (3, 4, 6)
    # The same layout without label folders is an error for a labelled role.
    with pytest.raises(DataError):
        _build(kind, root, role="source", **fields)


# --- List files ------------------------------------------------------------------------------


def test_gta5_list_file_order_and_blank_lines(tmp_path):
    write_gta5(tmp_path / "GTA5", count=3, size=(4, 4))
    list_file = tmp_path / "train.txt"
    list_file.write_text("00003.png\n\n00001.png\n")
    dataset = _build("gta5", tmp_path / "GTA5", list_file=str(list_file))
    assert dataset.names == ["00003", "00001"]
    # split names the selection once a list file chooses the images
    dataset = _build("gta5", tmp_path / "GTA5", list_file=str(list_file), split="train")
    assert len(dataset) == 2


def test_list_file_relative_to_root(tmp_path):
    write_synthia(tmp_path / "SYNTHIA", count=2, size=(4, 4))
    (tmp_path / "SYNTHIA" / "list.txt").write_text("RGB/0000001.png\n")
    dataset = _build("synthia", tmp_path / "SYNTHIA", list_file="list.txt")
    assert dataset.names == ["0000001"]


def test_cityscapes_list_file(tmp_path):
    write_cityscapes(tmp_path / "cs", {"train": 3}, size=(4, 8))
    list_file = tmp_path / "cityscapes_list.txt"
    list_file.write_text("bremen/bremen_000001_000020_leftImg8bit.png\n")
    dataset = _build("cityscapes", tmp_path / "cs", list_file=str(list_file))
    assert dataset.names == ["bremen/bremen_000001_000020_leftImg8bit"]


def test_list_file_line_naming_a_missing_file(tmp_path):
    write_gta5(tmp_path / "GTA5", count=2, size=(4, 4))
    list_file = tmp_path / "train.txt"
    list_file.write_text("00001.png\n00002.png\n00009.png\n")
    with pytest.raises(DataError) as error:
        _build("gta5", tmp_path / "GTA5", list_file=str(list_file))
    message = _message(error)
    assert f"{list_file} line 3" in message and "00009.png" in message


def test_cityscapes_list_line_that_is_not_an_image_name(tmp_path):
    write_cityscapes(tmp_path / "cs", {"train": 1}, size=(4, 8))
    list_file = tmp_path / "list.txt"
    list_file.write_text("aachen/aachen_000000_000019_gtFine_labelIds.png\n")
    with pytest.raises(DataError) as error:
        _build("cityscapes", tmp_path / "cs", list_file=str(list_file))
    assert f"{list_file} line 1" in _message(error)


def test_missing_and_empty_list_files(tmp_path):
    write_gta5(tmp_path / "GTA5", count=1, size=(4, 4))
    with pytest.raises(DataError, match="list file not found") as error:
        _build("gta5", tmp_path / "GTA5", list_file="lists/none.txt")
    assert "lists/none.txt" in _message(error)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match="names no images"):
        _build("gta5", tmp_path / "GTA5", list_file=str(tmp_path / "empty.txt"))


# --- Layout errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("gta5", "GTA5 root not found; expected images/00001.png and labels/00001.png"),
        ("synthia", "SYNTHIA root not found; expected RGB/0000000.png and GT/LABELS/0000000.png"),
        ("cityscapes", "Cityscapes root not found; expected leftImg8bit/<split>/<city>/"),
        ("camvid", "CamVid root not found; expected <split>/0001TP_006690.png"),
    ],
)
def test_missing_root_names_the_expected_layout(tmp_path, kind, expected):
    root = tmp_path / "data" / "nowhere"
    with pytest.raises(DataError) as error:
        _build(kind, root)
    message = _message(error)
    assert message.startswith(f"{root}: ") and expected in message


def test_missing_split_folder(tmp_path):
    write_cityscapes(tmp_path / "cs", {"train": 1}, size=(4, 8))
    with pytest.raises(DataError) as error:
        _build("cityscapes", tmp_path / "cs", split="val")
    assert "no leftImg8bit/val folder" in _message(error)


def test_empty_dataset(tmp_path):
    (tmp_path / "GTA5" / "images").mkdir(parents=True)
    (tmp_path / "GTA5" / "labels").mkdir()
    with pytest.raises(DataError, match="no GTA5 images found") as error:
        _build("gta5", tmp_path / "GTA5")
    assert str(tmp_path / "GTA5") in _message(error)


def test_image_without_label_is_named_at_build_time(tmp_path):
    layout = write_gta5(tmp_path / "GTA5", count=3, size=(4, 4))
    layout.files["00002"][1].unlink()
    with pytest.raises(DataError) as error:
        _build("gta5", layout.root)
    message = _message(error)
    assert str(layout.files["00002"][0]) in message and "no label" in message


def test_unreadable_image_is_named_when_read(tmp_path):
    layout = write_gta5(tmp_path / "GTA5", count=2, size=(4, 4))
    layout.files["00002"][0].write_bytes(b"broken")
    dataset = _build("gta5", layout.root)
    dataset[0]
    with pytest.raises(DataError) as error:
        dataset[1]
    assert str(layout.files["00002"][0]) in _message(error)


def test_label_value_outside_the_mapping_names_the_file(tmp_path):
    root = tmp_path / "GTA5"
    write_png(root / "images" / "00001.png", _image(1, 2))
    write_palettised_png(root / "labels" / "00001.png", np.array([[7, 40]]), gta5_palette())
    with pytest.raises(DataError) as error:
        _build("gta5", root)[0]
    message = _message(error)
    assert str(root / "labels" / "00001.png") in message and "40" in message


def test_cityscapes_label_size_mismatch_is_an_error(tmp_path):
    layouts = write_cityscapes(tmp_path / "cs", {"train": 1}, size=(4, 8))
    name = layouts["train"].names[0]
    label_path = layouts["train"].files[name][1]
    write_png(label_path, np.full((2, 8), 7, dtype=np.uint8))
    with pytest.raises(DataError) as error:
        _build("cityscapes", tmp_path / "cs")[0]
    message = _message(error)
    assert str(label_path) in message and "2x8" in message and "4x8" in message


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"split": "train"}, "split"),
        ({"crop": [0, 4]}, "crop"),
        ({"random_scale": [1.5, 0.5]}, "random_scale"),
        ({"root": ""}, "root"),
        ({"colour": True}, "colour"),
    ],
)
def test_config_errors_name_the_key(tmp_path, fields, key):
    config = {"kind": "gta5", "root": str(tmp_path), **fields}
    with pytest.raises(ConfigError) as error:
        build_dataset(config, "cityscapes19", "source")
    assert key in _message(error)


# --- Samples and seeds -----------------------------------------------------------------------


def test_seeded_access_drives_the_augmentation(tmp_path):
    layout = write_gta5(tmp_path / "GTA5", count=2, size=(16, 20))
    dataset = _build("gta5", layout.root, crop=[6, 6], flip=True, random_scale=[0.8, 1.2])
    first = dataset[(1, 123)]
    again = dataset[(1, 123)]
    assert first["index"] == 1 and first["name"] == "00002"
    assert tuple(first["image"].shape) == (3, 6, 6) and tuple(first["label"].shape) == (6, 6)
    assert (first["image"] == again["image"]).all() and (first["label"] == again["label"]).all()
    plain = dataset[1]
    same_as_seed_index = dataset[(1, 1)]
    assert (plain["image"] == same_as_seed_index["image"]).all()
    crops = {dataset[(1, seed)]["image"].numpy().tobytes() for seed in range(8)}
    assert len(crops) > 1
    assert dataset[-1]["index"] == 1
    with pytest.raises(IndexError):
        dataset[2]


def test_folder_missing_root_and_clashing_names(tmp_path):
    with pytest.raises(DataError) as error:
        _build("folder", tmp_path / "nowhere", images="images", labels="labels")
    message = _message(error)
    assert "image folder root not found" in message
    assert "expected images/<name>.png|.jpg|.jpeg and labels/<name>.png" in message
    root = tmp_path / "mine"
    write_png(root / "images" / "a.png", _image(1, 1))
    write_png(root / "images" / "a.jpg", _image(1, 1))
    with pytest.raises(DataError, match="same name") as error:
        _build("folder", root, role="target", images="images")
    assert str(root / "images") in _message(error)


def test_folder_list_file_with_nested_entries(tmp_path):
    root = tmp_path / "mine"
    for name in ("a/b", "a/c", "d"):
        write_png(root / "images" / f"{name}.png", _image(1, 2))
        write_png(root / "labels" / f"{name}.png", np.zeros((1, 2), dtype=np.uint8))
    (root / "list.txt").write_text("a/c.png\nd.png\n")
    dataset = _build("folder", root, images="images", labels="labels", list_file="list.txt")
    assert dataset.names == ["a/c", "d"]
    (root / "list.txt").write_text("a/c.png\na/x.png\n")
    with pytest.raises(DataError) as error:
        _build("folder", root, images="images", labels="labels", list_file="list.txt")
    assert f"{root / 'list.txt'} line 2" in _message(error)


# --- Pseudo labels ---------------------------------------------------------------------------


def _gta5_with_pseudo_labels(root, count: int = 3, size=(16, 20)):
    """A GTA5 layout whose pseudo labels (in root/pseudo) equal its ground-truth train ids."""
    layout = write_gta5(root, count=count, size=size)
    train_ids = {name: _expected_train_ids(label) for name, label in layout.labels.items()}
    files = write_pseudo_labels(root / "pseudo", train_ids)
    return layout, files


@pytest.mark.parametrize(
    "augmentation",
    [
        {"crop": [10, 12], "flip": True, "random_scale": [0.6, 1.4]},
        {"resize": [12, 14], "crop": [16, 18], "flip": True},  # the crop pads
        {"random_scale": [0.5, 2.0]},
    ],
)
def test_pseudo_labels_go_through_the_image_augmentation(tmp_path, augmentation):
    layout, _ = _gta5_with_pseudo_labels(tmp_path / "GTA5")
    dataset = _build("gta5", layout.root, pseudo_labels="pseudo", **augmentation)
    without = _build("gta5", layout.root, **augmentation)
    for seed in range(8):
        sample = dataset[(seed % 3, seed)]
        assert set(sample) == {"image", "label", "pseudo_label", "name", "index"}
        assert sample["pseudo_label"].dtype == sample["label"].dtype
        # Equal to the ground truth at every pixel: the same scale, window, padding and flip.
        assert (sample["pseudo_label"] == sample["label"]).all()
        # Reading pseudo labels changes no random draw: image and label are as without them.
        plain = without[(seed % 3, seed)]
        assert (sample["image"] == plain["image"]).all()
        assert (sample["label"] == plain["label"]).all()
    if augmentation.get("crop") == [16, 18]:
        # 12x14 padded to 16x18: the padded rows and columns are 255 in the pseudo label.
        pseudo_label = dataset[(0, 0)]["pseudo_label"].numpy()
        assert (pseudo_label[12:] == 255).all()
        assert (pseudo_label[:, :4] == 255).all() or (pseudo_label[:, 14:] == 255).all()


def test_pseudo_labels_of_a_cityscapes_target_set(tmp_path, monkeypatch):
    root = tmp_path / "cs"
    layouts = write_cityscapes(root, {"train": 3}, size=(8, 12))
    names = layouts["train"].names
    assert names[0] == "aachen/aachen_000000_000019_leftImg8bit"
    pseudo = {name: np.full((8, 12), index, dtype=np.uint8) for index, name in enumerate(names)}
    pseudo[names[1]][0, :3] = 255
    files = write_pseudo_labels(tmp_path / "pseudo", pseudo)
    assert files[names[0]] == tmp_path / "pseudo" / "aachen" / f"{names[0].split('/')[1]}.png"
    shutil.rmtree(root / "gtFine")  # the target ground truth is neither needed nor opened
    real_read_label = read_label

    def read_pseudo_labels_only(path, *args, **kwargs):
        assert "gtFine" not in str(path), f"ground-truth label opened: {path}"
        return real_read_label(path, *args, **kwargs)

    monkeypatch.setattr("udaseg.data.datasets.base.read_label", read_pseudo_labels_only)
    dataset = _build("cityscapes", root, role="target", pseudo_labels=str(tmp_path / "pseudo"))
    for index, name in enumerate(names):
        sample = dataset[index]
        assert "label" not in sample and sample["name"] == name
        assert sample["pseudo_label"].dtype == torch.int64
        np.testing.assert_array_equal(sample["pseudo_label"].numpy(), pseudo[name])


def test_pseudo_labels_of_a_validation_set_follow_the_label_size(tmp_path):
    layouts = write_cityscapes(tmp_path / "cs", {"val": 1}, size=(16, 32))
    name = layouts["val"].names[0]
    write_pseudo_labels(tmp_path / "cs" / "pseudo", {name: np.zeros((16, 32), dtype=np.uint8)})
    config = {
        "kind": "cityscapes",
        "root": str(tmp_path / "cs"),
        "split": "val",
        "pseudo_labels": "pseudo",
    }
    sample = build_dataset(config, "cityscapes19", "val", image_size=(8, 16))[0]
    assert tuple(sample["image"].shape) == (3, 8, 16)
    assert tuple(sample["pseudo_label"].shape) == tuple(sample["label"].shape) == (16, 32)
    sample = build_dataset(config, "cityscapes19", "val", image_size=(8, 16), label_size=(4, 8))[0]
    assert tuple(sample["pseudo_label"].shape) == (4, 8)


def test_missing_pseudo_label_folder_is_named_at_build_time(tmp_path):
    layout = write_gta5(tmp_path / "GTA5", count=2, size=(4, 4))
    with pytest.raises(DataError) as error:
        _build("gta5", layout.root, role="target", pseudo_labels="pseudo")
    message = _message(error)
    assert str(layout.root / "pseudo") in message and "pseudo-label folder not found" in message
    assert "data.target.pseudo_labels" in message


def test_missing_pseudo_label_file_is_named_at_build_time(tmp_path):
    layout, files = _gta5_with_pseudo_labels(tmp_path / "GTA5", size=(4, 4))
    files["00002"].unlink()
    with pytest.raises(DataError) as error:
        _build("gta5", layout.root, role="target", pseudo_labels="pseudo")
    message = _message(error)
    assert message.startswith(f"{files['00002']}: pseudo-label file not found")
    assert str(layout.files["00002"][0]) in message and "1 of 3 samples" in message


@pytest.mark.parametrize(
    "content, problem",
    [
        (np.zeros((4, 5), dtype=np.uint8), "pseudo label size 4x5 differs from its image's 4x4"),
        (np.array([[0, 18, 19, 255]] * 4, dtype=np.uint8), "values [19]"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "single-channel"),
        (b"broken", "cannot read"),
    ],
)
def test_bad_pseudo_label_file_is_named_when_read(tmp_path, content, problem):
    layout, files = _gta5_with_pseudo_labels(tmp_path / "GTA5", size=(4, 4))
    if isinstance(content, bytes):
        files["00002"].write_bytes(content)
    else:
        write_png(files["00002"], content)
    dataset = _build("gta5", layout.root, role="target", pseudo_labels="pseudo")
    dataset[0]
    with pytest.raises(DataError) as error:
        dataset[1]
    message = _message(error)
    assert message.startswith(f"{files['00002']}: ") and problem in message


def test_empty_pseudo_labels_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_dataset(
            {"kind": "gta5", "root": str(tmp_path), "pseudo_labels": ""}, "cityscapes19", "target"
        )
    assert "pseudo_labels" in _message(error)

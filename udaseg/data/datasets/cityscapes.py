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

    def list_samples(self) -> list[SampleFiles]:
        images = self.root / "leftImg8bit" / self.config.split
        self.require_directory(images)
        if self.labelled:
            self.require_directory(self.root / "gtFine" / self.config.split)
        if self.config.list_file is None:
            relative_paths = sorted(
                f"{city.name}/{path.name}"
                for city in images.iterdir()
                if city.is_dir()
                for path in city.iterdir()
                if path.name.endswith(IMAGE_SUFFIX)
            )
            return [self._sample(relative) for relative in relative_paths]
        samples = []
        for line_number, entry in self.read_list_file():
            if not entry.endswith(IMAGE_SUFFIX):
                raise self.list_file_error(
                    line_number, f"{entry} is not a Cityscapes image name (*{IMAGE_SUFFIX})"
                )
            sample = self._sample(entry)
            self.check_listed_image(line_number, entry, sample.image)
            samples.append(sample)
        return samples

    def _sample(self, relative: str) -> SampleFiles:
        """`relative` is "<city>/<city>_<seq>_<frame>_leftImg8bit.png"."""
        split = self.config.split
        base = relative[: -len(IMAGE_SUFFIX)]
        return SampleFiles(
            name=relative[: -len(".png")],
            image=self.root / "leftImg8bit" / split / relative,
            label=self.root / "gtFine" / split / f"{base}_gtFine_{self.config.label_type}.png",
        )

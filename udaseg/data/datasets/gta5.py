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

from udaseg.data.datasets.base import SampleFiles, SegmentationDataset, UnsplitDatasetConfig
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

    def list_samples(self) -> list[SampleFiles]:
        images = self.root / "images"
        labels = self.root / "labels"
        self.require_directory(images)
        if self.labelled:
            self.require_directory(labels)
        if self.config.list_file is None:
            files = sorted(path.name for path in images.iterdir() if _is_png(path))
            return [self._sample(file_name) for file_name in files]
        samples = []
        for line_number, entry in self.read_list_file():
            # Accept "00001.png" (AdaptSegNet/ADVENT lists) and "images/00001.png".
            file_name = entry.removeprefix("images/")
            sample = self._sample(file_name)
            self.check_listed_image(line_number, entry, sample.image)
            samples.append(sample)
        return samples

    def _sample(self, file_name: str) -> SampleFiles:
        return SampleFiles(
            name=Path(file_name).stem,
            image=self.root / "images" / file_name,
            label=self.root / "labels" / file_name,
        )


def _is_png(path: Path) -> bool:
    return path.suffix.lower() == ".png" and path.is_file()

"""SYNTHIA-RAND-CITYSCAPES: `RGB/NNNNNNN.png` with 16-bit multi-channel `GT/LABELS/NNNNNNN.png`.

The class id is the FIRST channel of the 16-bit label PNG, which is read with pypng because
Pillow keeps only the high byte of 16-bit RGB samples (REFERENCE §4.3, §7.6). Lane marking
(22) is void, not road (`SYNTHIA_IDS`).

`labels_dir` points instead at the third-party `synthia_mapped_to_cityscapes` folder (shared by
BDL's author, read by BDL/FDA/DACS): despite its name it holds SYNTHIA class ids as 8-bit
single-channel PNGs of the same file names, so the same mapping applies.

There are no official splits: `split` is `all`; `list_file` takes BDL/FDA's
`synthia_list/train.txt` lines ("RGB/0000000.png") or bare file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg.data.datasets.base import (
    SampleFiles,
    SegmentationDataset,
    UnsplitDatasetConfig,
    list_image_files,
)
from udaseg.data.io import read_label, read_png16
from udaseg.data.label_spaces import SYNTHIA_IDS, LabelMapping
from udaseg.registry import DATASETS


@dataclass
class SynthiaConfig(UnsplitDatasetConfig):
    """`kind: synthia`."""

    # A folder under root (or an absolute path) of 8-bit single-channel labels holding SYNTHIA
    # ids, e.g. "synthia_mapped_to_cityscapes"; None reads the 16-bit GT/LABELS files.
    labels_dir: str | None = None


@DATASETS.register("synthia")
class SynthiaDataset(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES; sample names are the stems ("0000000")."""

    Config = SynthiaConfig
    display_name = "SYNTHIA"
    layout = "RGB/0000000.png and GT/LABELS/0000000.png (16-bit, class id in the first channel)"

    def raw_mapping(self) -> LabelMapping:
        return SYNTHIA_IDS

    @property
    def image_directory(self) -> Path:
        return self.root / "RGB"

    @property
    def label_directory(self) -> Path:
        if self.config.labels_dir is not None:
            return self.root / Path(self.config.labels_dir).expanduser()
        return self.root / "GT" / "LABELS"

    def read_raw_label(self, path: Path) -> np.ndarray:
        if self.config.labels_dir is not None:
            return read_label(path)
        # [H, W, C] uint16: channel 0 is the class id, the others hold instance data.
        return read_png16(path)[:, :, 0]

    def list_images(self) -> list[str]:
        return list_image_files(self.image_directory)

    def entry_from_list_line(self, line_number: int, entry: str) -> str:
        # BDL/FDA lists say "RGB/0000000.png"; bare file names work too.
        return entry.removeprefix("RGB/")

    def sample_for(self, entry: str) -> SampleFiles:
        return SampleFiles(
            name=Path(entry).stem,
            image=self.image_directory / entry,
            label=self.label_directory / entry,
        )

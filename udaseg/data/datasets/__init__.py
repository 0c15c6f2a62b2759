"""Dataset readers for the real on-disk layouts; importing this registers them in DATASETS.

Kinds: `gta5`, `synthia`, `cityscapes`, `camvid`, `folder`. Build one with `build_dataset`.
"""

from udaseg.data.datasets import camvid, cityscapes, folder, gta5, synthia
from udaseg.data.datasets.base import (
    DatasetConfig,
    SampleFiles,
    SegmentationDataset,
    build_dataset,
)
from udaseg.data.datasets.camvid import CamVidDataset
from udaseg.data.datasets.cityscapes import CityscapesDataset
from udaseg.data.datasets.folder import FolderDataset, load_label_mapping
from udaseg.data.datasets.gta5 import GTA5Dataset
from udaseg.data.datasets.synthia import SynthiaDataset

__all__ = [
    "CamVidDataset",
    "CityscapesDataset",
    "DatasetConfig",
    "FolderDataset",
    "GTA5Dataset",
    "SampleFiles",
    "SegmentationDataset",
    "SynthiaDataset",
    "build_dataset",
    "camvid",
    "cityscapes",
    "folder",
    "gta5",
    "load_label_mapping",
    "synthia",
]

"""The common part of every dataset reader: config fields, pairing checks, sample assembly.

A reader subclasses `SegmentationDataset` and says where its files are: `image_directory`,
`label_directory`, `list_images()` (every image of the split, relative to `image_directory`),
`sample_for(entry)` (the files of one image) and, when its list files need normalising,
`entry_from_list_line`. It names the mapping of its raw label values (`raw_mapping`) and, if its
labels are not plain label images, how to read them (`read_raw_label`). The base class does the
rest:

- at construction: checks the root and folders, lists the samples (every image, sorted, or the
  list file's entries in order), checks that every image of a labelled role has its label file
  and, with `pseudo_labels`, its pseudo label (listing directories only, no file is opened);
- per sample: reads the image and, for labelled roles, the label; maps raw values to train ids
  of the requested label space; reads the pseudo label when configured; applies the
  augmentation to all of them jointly with a generator seeded per sample.

`role="target"` never opens, nor requires, any ground-truth label file: the target training set
is read without labels, whatever the layout provides. Pseudo labels are a separate input
(`"pseudo_label"`), never put in place of `"label"`.
"""

from __future__ import annotations

import logging
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from udaseg.data.io import read_image, read_label
from udaseg.data.label_spaces import LabelMapping, LabelSpace, get_label_space
from udaseg.data.transforms import EvalTransform, Size, TrainTransform, resize_label
from udaseg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ROLES = ("source", "target", "val")
AUGMENTATION_KEYS = ("resize", "random_scale", "crop", "flip")
# The value of left-out pixels in pseudo-label files (`udaseg pseudo-label` writes 8-bit PNGs).
PSEUDO_LABEL_IGNORE = 255


# `root: toy://source` reads the embedded toy benchmark (generated once into the cache), in
# its default version; `toy-synthia://` is its SYNTHIA-layout variant, `-camvid` puts its target
# in the CamVid-32 layout (`toy-synthia-camvid://`), and `toy-v1://`, `toy-v2://`,
# `toy-synthia-v1://`... name a version explicitly.
_TOY_ROOT = re.compile(
    r"^toy(?P<synthia>-synthia)?(?P<camvid>-camvid)?(?:-v(?P<version>\d+))?://(?P<sub>.*)$"
)


def toy_subfolder(root: str) -> str | None:
    """The folder a `toy[-synthia][-camvid][-vN]://<sub>` root names inside the benchmark
    (`<sub>`), or None when `root` is not a toy root."""
    match = _TOY_ROOT.match(root)
    return None if match is None else match["sub"]


def resolve_root(root: str) -> Path:
    """A dataset root folder; `toy[-synthia][-camvid][-vN]://<sub>` names a folder of the cached
    toy benchmark (source layout, target layout and version as the scheme says)."""
    match = _TOY_ROOT.match(root)
    if match is None:
        return Path(root).expanduser()
    from udaseg.data.toy import ensure_toy
    from udaseg.data.toy.generate import TOY_VERSION, VERSIONS
    from udaseg.data.toy.progress import GenerationProgress

    version = int(match["version"]) if match["version"] else TOY_VERSION
    if version not in VERSIONS:
        raise ConfigError(
            f"root {root!r}: the toy benchmark has versions {', '.join(map(str, VERSIONS))}"
        )
    layout = "synthia" if match["synthia"] else "gta5"
    progress = GenerationProgress(
        "toy benchmark", "[udaseg] generating the toy benchmark (once; then cached)"
    )
    target_layout = "camvid" if match["camvid"] else "cityscapes"
    directory = ensure_toy(
        layout=layout, progress=progress, version=version, target_layout=target_layout
    )
    return directory / match["sub"]


@dataclass
class DatasetConfig:
    """Fields every dataset kind has (`data.source`, `data.target`, `data.val`).

    Augmentation is applied in this order: resize, random scale, crop, flip. Validation sets
    must leave all four unset (their size is `eval.input_size`).
    """

    kind: str  # the dataset kind, a name in udaseg.registry.DATASETS
    root: str = ""  # the dataset's root folder (required; checked by validate)
    split: str = "train"  # the split folder, where the layout has one
    # A text file of image names, one a line, in the papers' list-file format for the kind;
    # a relative path is looked up as given, then under `root`. None = every image of the split.
    list_file: str | None = None
    resize: tuple[int, int] | None = None  # (height, width); image bicubic, label nearest
    random_scale: tuple[float, float] | None = None  # factor range applied after resize
    crop: tuple[int, int] | None = None  # random (height, width) crop; pads image 0, label void
    flip: bool = False  # horizontal flip with probability 0.5
    # A folder of `<sample name>.png` pseudo labels (8-bit train ids, 255 = ignore, the image's
    # size), as `udaseg pseudo-label` writes them; a relative path is taken as given when it
    # exists, else under `root`. Samples then carry "pseudo_label", augmented with the image.
    pseudo_labels: str | None = None
    # ProDA's soft pseudo labels: the folder `udaseg pseudo-label --save-soft` wrote (its
    # `soft/<sample name>.npy`, float16 [C, h, w] at the network's output resolution), or that
    # `soft/` folder itself. Samples then carry "soft_pseudo_label", float16 [C, H, W] aligned
    # with the augmented image (bilinear, align_corners, as ProDA upsamples them; 0 on padding).
    soft_pseudo_labels: str | None = None

    def validate(self) -> None:
        for key in ("resize", "crop"):
            size = getattr(self, key)
            if size is not None and min(size) < 1:
                raise ConfigError(f"{key}: expected a positive (height, width), got {list(size)}")
        if self.random_scale is not None:
            low, high = self.random_scale
            if not 0 < low <= high:
                raise ConfigError(
                    f"random_scale: expected 0 < low <= high, got {list(self.random_scale)}"
                )
        if not self.root:
            raise ConfigError("root: the dataset root folder is required")
        if self.pseudo_labels is not None and not self.pseudo_labels.strip():
            raise ConfigError("pseudo_labels: expected a folder of pseudo labels, or null")
        if self.soft_pseudo_labels is not None and not self.soft_pseudo_labels.strip():
            raise ConfigError(
                "soft_pseudo_labels: expected a folder of soft pseudo labels, or null"
            )


@dataclass
class UnsplitDatasetConfig(DatasetConfig):
    """A dataset without official splits (GTA5, SYNTHIA, user folders): a list file selects."""

    split: str = "all"

    def validate(self) -> None:
        super().validate()
        if self.split != "all" and self.list_file is None:
            raise ConfigError(
                f"split: {self.kind} has no official splits, so only `all` is valid "
                f"(got {self.split!r}); choose images with `list_file`"
            )


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample. `label` may name a file that does not exist (target role)."""

    name: str  # file stem, or the path relative to the image folder without extension
    image: Path
    label: Path | None


class SegmentationDataset(Dataset):
    """Base class of dataset readers.

    A sample is `{"image": uint8 [3, H, W], "label": int64 [H, W] (labelled roles only),
    "pseudo_label": int64 [H, W] (with `config.pseudo_labels` only), "soft_pseudo_label":
    float16 [C, H, W] (with `config.soft_pseudo_labels` only), "name": str, "index": int}`.
    `dataset[i]` and `dataset[(i, seed)]` both work: `seed` seeds the `np.random.Generator` of
    that sample's augmentation; `dataset[i]` uses seed `i`.

    Attributes:
        config: the dataset config.
        label_space: the space labels are mapped into.
        role: "source", "target" or "val".
        labelled: whether samples carry labels (every role but "target").
        mapping: raw label values -> train ids of `label_space` (None when unlabelled).
        pseudo_label_directory: the folder of pseudo labels (None when not configured).
        samples: the files of each sample, in a fixed (sorted or list-file) order.
        resized_labels: names of samples whose label was resized to its image's size, in this
            process (GTA5 only; data-loading workers keep their own sets).
    """

    Config: ClassVar[type] = DatasetConfig
    # Shown in messages, e.g. "GTA5".
    display_name: ClassVar[str] = "dataset"
    # The expected layout, for the missing-root message, e.g. "images/00001.png and ...".
    layout: ClassVar[str] = ""
    # GTA5 has a few labels whose size differs from their image's (REFERENCE §7.13); other
    # layouts treat that as a corrupt file.
    resizes_mismatched_labels: ClassVar[bool] = False

    def __init__(
        self,
        config: DatasetConfig,
        label_space: LabelSpace,
        role: str = "source",
        image_size: Size | None = None,
        label_size: Size | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.config = config
        self.label_space = label_space
        self.role = role
        self.labelled = role != "target"
        self.root = resolve_root(config.root)
        self.transform = self._build_transform(image_size, label_size)
        self._directory_listings: dict[Path, set[str]] = {}
        if not self.root.is_dir():
            raise self.layout_error(f"{self.display_name} root not found")
        self.pseudo_label_directory = self._find_pseudo_label_directory()
        self.mapping: LabelMapping | None = (
            self.raw_mapping().into(label_space) if self.labelled else None
        )
        self.samples: list[SampleFiles] = self.list_samples()
        if not self.samples:
            if config.list_file is not None:
                raise DataError(f"{self.resolve(config.list_file)}: the list file names no images")
            raise self.layout_error(f"no {self.display_name} images found")
        if self.labelled:
            self._check_labels_exist()
        if self.pseudo_label_directory is not None:
            self._check_pseudo_labels_exist()
        self.soft_pseudo_label_directory = self._find_soft_pseudo_label_directory()
        self._directory_listings.clear()  # only needed while building; workers get a copy
        self.resized_labels: set[str] = set()

    # --- What subclasses provide -------------------------------------------------------------

    @property
    def image_directory(self) -> Path:
        """The folder `list_images()` and list-file entries are relative to."""
        raise NotImplementedError

    @property
    def label_directory(self) -> Path:
        """The folder of label files, required for labelled roles."""
        raise NotImplementedError

    def list_images(self) -> list[str]:
        """Every image of the split, as paths relative to `image_directory` (any order)."""
        raise NotImplementedError

    def sample_for(self, entry: str) -> SampleFiles:
        """The files of the image at `entry`, a path relative to `image_directory`."""
        raise NotImplementedError

    def entry_from_list_line(self, line_number: int, entry: str) -> str:
        """A list file's entry as a path relative to `image_directory`.

        Layouts override this to accept the papers' spellings (e.g. "images/00001.png") or to
        reject entries that cannot name an image, with `list_file_error(line_number, ...)`.
        """
        return entry

    def raw_mapping(self) -> LabelMapping:
        """The mapping of this layout's raw label values (before `.into(label_space)`)."""
        raise NotImplementedError

    def read_raw_label(self, path: Path) -> np.ndarray:
        """Read the raw label values [H, W] of one label file."""
        return read_label(path)

    def list_samples(self) -> list[SampleFiles]:
        """The samples, from `config.list_file` when set, else every image in sorted order.

        Raises:
            DataError: a required folder is missing, or a list-file line names no image.
        """
        self.require_directory(self.image_directory)
        if self.labelled:
            self.require_directory(self.label_directory)
        if self.config.list_file is None:
            return [self.sample_for(entry) for entry in sorted(self.list_images())]
        samples = []
        for line_number, entry in self.read_list_file():
            sample = self.sample_for(self.entry_from_list_line(line_number, entry))
            self.check_listed_image(line_number, entry, sample.image)
            samples.append(sample)
        return samples

    # --- Helpers for subclasses --------------------------------------------------------------

    def layout_error(self, problem: str, where: Path | None = None) -> DataError:
        """A one-line DataError naming the folder, the problem and the expected layout."""
        return DataError(f"{where or self.config.root}: {problem}; expected {self.layout}")

    def require_directory(self, directory: Path) -> None:
        if not directory.is_dir():
            relative = _relative_to(directory, self.root)
            raise self.layout_error(f"no {relative} folder", where=self.root)

    def resolve(self, path: str) -> Path:
        """A path from the config: as given when it exists or is absolute, else under root."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return self.root / candidate

    def read_list_file(self) -> list[tuple[int, str]]:
        """The entries of `config.list_file` as (line number, first field) pairs.

        Blank lines and lines starting with '#' are skipped; only the first whitespace-separated
        field is kept (some list files add a label path after the image's).
        """
        assert self.config.list_file is not None
        path = self.resolve(self.config.list_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{self.config.list_file}: list file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            reason = " ".join(str(error).split())
            raise DataError(f"{path}: cannot read list file ({reason})") from None
        entries = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                entries.append((line_number, stripped.split()[0]))
        return entries

    def list_file_error(self, line_number: int, problem: str) -> DataError:
        path = self.resolve(self.config.list_file or "")
        return DataError(f"{path} line {line_number}: {problem}")

    def check_listed_image(self, line_number: int, entry: str, image: Path) -> None:
        """Fail with the list file's name and line when the image it names does not exist."""
        if not self.file_exists(image):
            raise self.list_file_error(line_number, f"{entry} not found (looked for {image})")

    def file_exists(self, path: Path) -> bool:
        """Whether `path` is a file, from a cached listing of its folder (one listing each)."""
        directory = path.parent
        listing = self._directory_listings.get(directory)
        if listing is None:
            try:
                with os.scandir(directory) as entries:
                    listing = {entry.name for entry in entries if entry.is_file()}
            except OSError:
                listing = set()
            self._directory_listings[directory] = listing
        return path.name in listing

    # --- Building ----------------------------------------------------------------------------

    def _build_transform(
        self, image_size: Size | None, label_size: Size | None
    ) -> TrainTransform | EvalTransform:
        augmentation = [
            key for key in AUGMENTATION_KEYS if getattr(self.config, key) not in (None, False)
        ]
        if self.role == "val" and augmentation:
            raise ConfigError(
                f"data.val.{augmentation[0]}: a validation set takes no training augmentation; "
                "leave it unset and use eval.input_size to resize validation images"
            )
        if self.role == "val" or image_size is not None or label_size is not None:
            if augmentation:
                raise ValueError(
                    f"image_size/label_size replace the augmentation of data.{self.role}, "
                    f"which sets {augmentation[0]}"
                )
            return EvalTransform(image_size=image_size, label_size=label_size)
        return TrainTransform(
            resize=self.config.resize,
            random_scale=self.config.random_scale,
            crop=self.config.crop,
            flip=self.config.flip,
            ignore_index=self.label_space.ignore_index,
        )

    def _check_labels_exist(self) -> None:
        for sample in self.samples:
            if sample.label is None or not self.file_exists(sample.label):
                expected = "" if sample.label is None else f" (expected {sample.label})"
                raise DataError(f"{sample.image}: image has no label file{expected}")

    def _find_pseudo_label_directory(self) -> Path | None:
        if self.config.pseudo_labels is None:
            return None
        directory = self.resolve(self.config.pseudo_labels)
        if not directory.is_dir():
            raise DataError(
                f"{directory}: pseudo-label folder not found (data.{self.role}.pseudo_labels)"
            )
        return directory

    def pseudo_label_file(self, files: SampleFiles) -> Path:
        """Where the pseudo label of a sample is: `<pseudo_labels>/<sample name>.png`."""
        assert self.pseudo_label_directory is not None
        return self.pseudo_label_directory / f"{files.name}.png"

    def _check_pseudo_labels_exist(self) -> None:
        # Count them all: a pseudo-labelling run that stopped early leaves many missing, and the
        # count says so at once.
        missing = [
            files for files in self.samples if not self.file_exists(self.pseudo_label_file(files))
        ]
        if missing:
            first = missing[0]
            raise DataError(
                f"{self.pseudo_label_file(first)}: pseudo-label file not found (image "
                f"{first.image}; {len(missing)} of {len(self.samples)} samples have none)"
            )

    # --- Reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> list[str]:
        return [sample.name for sample in self.samples]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """One sample; `key` is an index or an (index, augmentation seed) pair.

        Returns:
            {"image": uint8 [3, H, W], "label": int64 [H, W] (labelled roles only),
             "pseudo_label": int64 [H, W] (with `config.pseudo_labels`), "name": str,
             "index": int}
        """
        if isinstance(key, tuple):
            index, seed = operator.index(key[0]), operator.index(key[1])
        else:
            index = seed = operator.index(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        files = self.samples[index]
        image = read_image(files.image)
        label_maps: dict[str, np.ndarray] = {}
        if self.labelled:
            assert files.label is not None and self.mapping is not None
            raw = self.read_raw_label(files.label)
            raw = self._match_image_size(raw, image, files)
            label_maps["label"] = self.mapping.apply(raw, source=str(files.label))
        if self.pseudo_label_directory is not None:
            label_maps["pseudo_label"] = self._read_pseudo_label(files, image)
        if self.soft_pseudo_label_directory is not None:
            label_maps[_SOFT_COORDINATES] = _pixel_coordinates(image, self.label_space)
        # SeedSequence needs a non-negative entropy; wrap negative seeds instead of failing.
        generator = np.random.default_rng(seed % 2**64)
        image_shape = image.shape[:2]
        image, label_maps = self.transform.apply(image, label_maps, generator)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
            "name": files.name,
            "index": index,
        }
        if self.soft_pseudo_label_directory is not None:
            coordinates = label_maps.pop(_SOFT_COORDINATES)
            soft = self._read_soft_pseudo_label(files)
            sample["soft_pseudo_label"] = torch.from_numpy(
                _sample_soft_labels(soft, coordinates, image_shape, self.label_space)
            )
        for key, values in label_maps.items():
            sample[key] = torch.from_numpy(values.astype(np.int64))
        return sample

    def _read_pseudo_label(self, files: SampleFiles, image: np.ndarray) -> np.ndarray:
        """The pseudo label [H, W] of a sample, checked against its image [H, W, 3]."""
        path = self.pseudo_label_file(files)
        values = read_label(path)
        if values.shape != image.shape[:2]:
            raise DataError(
                f"{path}: pseudo label size {values.shape[0]}x{values.shape[1]} differs from its "
                f"image's {image.shape[0]}x{image.shape[1]} ({files.image})"
            )
        # Values are train ids already (no raw mapping): anything else means the file was made
        # for another label space, and training on it would silently teach the wrong classes.
        space = self.label_space
        valid = ((values >= 0) & (values < space.num_classes)) | (values == PSEUDO_LABEL_IGNORE)
        if not valid.all():
            bad_values = np.unique(values[~valid])[:5].tolist()
            raise DataError(
                f"{path}: pseudo-label values {bad_values} are neither train ids of {space.name} "
                f"(0..{space.num_classes - 1}) nor {PSEUDO_LABEL_IGNORE}"
            )
        if space.ignore_index != PSEUDO_LABEL_IGNORE:
            values = np.where(values == PSEUDO_LABEL_IGNORE, space.ignore_index, values)
        return values

    def _find_soft_pseudo_label_directory(self) -> Path | None:
        if self.config.soft_pseudo_labels is None:
            return None
        directory = self.resolve(self.config.soft_pseudo_labels)
        if (directory / "soft").is_dir():
            directory = directory / "soft"
        if not directory.is_dir():
            raise DataError(
                f"{directory}: soft pseudo-label folder not found "
                f"(data.{self.role}.soft_pseudo_labels)"
            )
        missing = [
            files for files in self.samples if not self.file_exists(directory / f"{files.name}.npy")
        ]
        if missing:
            raise DataError(
                f"{directory / (missing[0].name + '.npy')}: soft pseudo-label file not found "
                f"({len(missing)} of {len(self.samples)} samples have none; write them with "
                "`udaseg pseudo-label --save-soft`)"
            )
        return directory

    def _read_soft_pseudo_label(self, files: SampleFiles) -> np.ndarray:
        """The soft pseudo label float [C, h, w] of a sample, checked against the label space."""
        assert self.soft_pseudo_label_directory is not None
        path = self.soft_pseudo_label_directory / f"{files.name}.npy"
        try:
            soft = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot read soft pseudo label ({error})") from None
        classes = self.label_space.num_classes
        if soft.ndim != 3 or soft.shape[0] != classes:
            raise DataError(
                f"{path}: soft pseudo label of shape {list(soft.shape)}; expected "
                f"[{classes}, h, w] for {self.label_space.name}"
            )
        return soft

    def _match_image_size(
        self, raw: np.ndarray, image: np.ndarray, files: SampleFiles
    ) -> np.ndarray:
        image_size = image.shape[:2]
        if raw.shape == image_size:
            return raw
        if not self.resizes_mismatched_labels:
            raise DataError(
                f"{files.label}: label size {raw.shape[0]}x{raw.shape[1]} differs from its "
                f"image's {image_size[0]}x{image_size[1]} ({files.image})"
            )
        if not self.resized_labels:
            logger.warning(
                "%s %s: label size %dx%d differs from the image's %dx%d; such labels are "
                "resized with nearest interpolation (see dataset.find_size_mismatches())",
                self.display_name,
                files.name,
                raw.shape[0],
                raw.shape[1],
                image_size[0],
                image_size[1],
            )
        self.resized_labels.add(files.name)
        return resize_label(raw, image_size)

    def find_size_mismatches(self) -> list[str]:
        """Names of samples whose label size differs from the image size.

        Reads only the file headers of every image and label (a few seconds for GTA5).
        """
        if not self.labelled:
            return []
        mismatched = []
        for files in self.samples:
            assert files.label is not None
            if _header_size(files.image) != _header_size(files.label):
                mismatched.append(files.name)
        return mismatched

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.config.split!r}, "
            f"role={self.role!r}, samples={len(self)})"
        )


# The label map that carries each output pixel's source pixel through the augmentation, so that
# a low-resolution soft label can be sampled where the augmented image's pixels came from.
_SOFT_COORDINATES = "_soft_pseudo_label_coordinates"


def _pixel_coordinates(image: np.ndarray, label_space: LabelSpace) -> np.ndarray:
    """int64 [H, W]: y * W + x, offset above the ignore index (padding gets the ignore index)."""
    height, width = image.shape[:2]
    offset = label_space.ignore_index + 1
    return np.arange(height * width, dtype=np.int64).reshape(height, width) + offset


def _sample_soft_labels(
    soft: np.ndarray,
    coordinates: np.ndarray,
    image_shape: tuple[int, int],
    label_space: LabelSpace,
) -> np.ndarray:
    """Bilinear (align_corners=True) samples of soft [C, h, w] at augmented pixels.

    Args:
        soft: float [C, h, w] over the whole original image.
        coordinates: int [H', W'] from `_pixel_coordinates` after the augmentation.
        image_shape: (H, W) of the original image.
    Returns:
        float16 [C, H', W']; 0 where the augmentation padded.
    """
    height, width = image_shape
    offset = label_space.ignore_index + 1
    padded = coordinates < offset
    flat = np.where(padded, 0, coordinates - offset)
    rows, columns = np.divmod(flat, width)
    soft_height, soft_width = soft.shape[1:]
    # align_corners=True: the image's corner pixels sit on the soft map's corner cells.
    scale_y = (soft_height - 1) / (height - 1) if height > 1 else 0.0
    scale_x = (soft_width - 1) / (width - 1) if width > 1 else 0.0
    y = rows * scale_y
    x = columns * scale_x
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    y1 = np.minimum(y0 + 1, soft_height - 1)
    x1 = np.minimum(x0 + 1, soft_width - 1)
    weight_y = (y - y0).astype(np.float32)
    weight_x = (x - x0).astype(np.float32)
    values = soft.astype(np.float32, copy=False)
    sampled = (
        values[:, y0, x0] * ((1 - weight_y) * (1 - weight_x))
        + values[:, y0, x1] * ((1 - weight_y) * weight_x)
        + values[:, y1, x0] * (weight_y * (1 - weight_x))
        + values[:, y1, x1] * (weight_y * weight_x)
    )
    sampled[:, padded] = 0.0
    return sampled.astype(np.float16)


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) from an image file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read image header ({error})") from None
    return height, width


def list_image_files(
    directory: Path, extensions: tuple[str, ...] = (".png",), recursive: bool = False
) -> list[str]:
    """The files of `directory` whose extension (any case) is one of `extensions`.

    Returns:
        POSIX paths relative to `directory`, unsorted; subfolders are searched when `recursive`.
    """
    paths = directory.rglob("*") if recursive else directory.iterdir()
    return [
        path.relative_to(directory).as_posix()
        for path in paths
        if path.suffix.lower() in extensions and path.is_file()
    ]


def _relative_to(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def identity_mapping(label_space: LabelSpace) -> LabelMapping:
    """Label files that already hold train ids of `label_space` (void = its ignore index)."""
    table = {train_id: train_id for train_id in range(label_space.num_classes)}
    table[label_space.ignore_index] = label_space.ignore_index
    return LabelMapping(name=f"{label_space.name}-trainIds", label_space=label_space, table=table)


def build_dataset(
    config: DatasetConfig | dict,
    label_space: LabelSpace | str,
    role: str,
    image_size: Size | None = None,
    label_size: Size | None = None,
) -> SegmentationDataset:
    """Build the dataset a config section describes.

    Args:
        config: a validated dataset config (`data.source` etc.), or a plain dict validated here.
        label_space: the space labels are mapped into, or its name.
        role: "source" (labelled, augmented), "target" (no labels: label files are never
            opened) or "val" (labelled, no augmentation allowed).
        image_size: (height, width) images are resized to (bicubic); for "val" (and unlabelled
            prediction sets) only, as it replaces the config's augmentation.
        label_size: (height, width) labels are resized to (nearest); None keeps them native.
    Returns:
        the dataset; samples as described in `SegmentationDataset`.
    """
    from udaseg.config import build_section
    from udaseg.registry import DATASETS

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if isinstance(config, dict):
        config = build_section("datasets", "kind", config, f"data.{role}")
    if isinstance(label_space, str):
        label_space = get_label_space(label_space)
    dataset_class = DATASETS.get(config.kind)
    if not isinstance(config, dataset_class.Config):
        raise ValueError(
            f"config of type {type(config).__name__} does not fit dataset kind {config.kind!r}"
        )
    return dataset_class(
        config, label_space, role=role, image_size=image_size, label_size=label_size
    )

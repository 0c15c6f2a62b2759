"""Users' own data: a folder of images and, optionally, a folder of label images.

Images (`.png`, `.jpg`, `.jpeg`, searched recursively by default) are matched to labels by
their path relative to `images` without extension, plus `label_suffix` and `label_extension`:
`images/a/b.jpg` pairs with `labels/a/b<label_suffix>.png`. The sample name is "a/b".

Label values are mapped with a small YAML file (`mapping`), which names the label space its
class names refer to and maps each raw value to a class name, a train id, or `ignore`:

    label_space: cityscapes19
    values: {0: road, 1: sidewalk, 7: car, 255: ignore}

Values absent from the file are an error when a label containing them is read. Without a
`mapping`, label files must already hold train ids of the model's label space (void = 255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from udaseg.data.datasets.base import (
    SampleFiles,
    SegmentationDataset,
    UnsplitDatasetConfig,
    identity_mapping,
    list_image_files,
)
from udaseg.data.label_spaces import LabelMapping, LabelSpace, get_label_space
from udaseg.errors import ConfigError, DataError
from udaseg.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IGNORE_WORDS = ("ignore", "void")


@dataclass
class FolderConfig(UnsplitDatasetConfig):
    """`kind: folder`. Relative `images`, `labels`, `mapping` and `list_file` paths are taken
    under `root` (`mapping` and `list_file` also as given, when that path exists)."""

    root: str = "."
    images: str = ""  # folder of images (required)
    labels: str | None = None  # folder of label images; required for source/val roles
    mapping: str | None = None  # YAML file mapping raw label values; None = values are train ids
    label_suffix: str = ""  # label file = <image path without extension><suffix><extension>
    label_extension: str = ".png"
    recursive: bool = True  # also take images in subfolders

    def validate(self) -> None:
        super().validate()
        if not self.images:
            raise ConfigError("images: required (the folder of images, relative to root)")
        if not self.label_extension.startswith("."):
            raise ConfigError(
                f"label_extension: expected an extension such as .png, got {self.label_extension!r}"
            )


@DATASETS.register("folder")
class FolderDataset(SegmentationDataset):
    """A user's folder of images, with labels matched by file stem."""

    Config = FolderConfig
    display_name = "image folder"

    def __init__(
        self,
        config: FolderConfig,
        label_space: LabelSpace,
        role: str = "source",
        image_size: tuple[int, int] | None = None,
        label_size: tuple[int, int] | None = None,
    ) -> None:
        labels = config.labels or "<labels>"
        self.layout = (
            f"{config.images}/<name>.png|.jpg|.jpeg and "
            f"{labels}/<name>{config.label_suffix}{config.label_extension}"
        )
        if role != "target" and config.labels is None:
            raise ConfigError(
                f"data.{role}.labels: a {role} set needs labels; set it to the folder of label "
                "images (only the target training set is read without labels)"
            )
        super().__init__(config, label_space, role, image_size, label_size)

    def raw_mapping(self) -> LabelMapping:
        if self.config.mapping is None:
            return identity_mapping(self.label_space)
        path = self.resolve(self.config.mapping)
        return load_label_mapping(path, self.label_space)

    @property
    def image_directory(self) -> Path:
        return self.root / Path(self.config.images).expanduser()

    @property
    def label_directory(self) -> Path:
        return self.root / Path(self.config.labels or "").expanduser()

    def list_images(self) -> list[str]:
        return list_image_files(
            self.image_directory, IMAGE_EXTENSIONS, recursive=self.config.recursive
        )

    def list_samples(self) -> list[SampleFiles]:
        samples = super().list_samples()
        # Unlike the fixed layouts, a folder may hold a.png next to a.jpg.
        self._check_unique_names(samples)
        return samples

    def sample_for(self, entry: str) -> SampleFiles:
        name = str(PurePosixPath(entry).with_suffix(""))
        label_file = f"{name}{self.config.label_suffix}{self.config.label_extension}"
        return SampleFiles(
            name=name,
            image=self.image_directory / entry,
            label=self.label_directory / label_file if self.config.labels else None,
        )

    @staticmethod
    def _check_unique_names(samples: list[SampleFiles]) -> None:
        seen: dict[str, Path] = {}
        for sample in samples:
            if sample.name in seen:
                raise DataError(
                    f"{sample.image}: same name as {seen[sample.name]}; their labels would be "
                    "the same file"
                )
            seen[sample.name] = sample.image


def load_label_mapping(path: str | Path, default_label_space: LabelSpace) -> LabelMapping:
    """Read a label-mapping YAML file.

    Args:
        path: a YAML mapping with `values` (raw value -> class name, train id or `ignore`) and
            optionally `label_space` (the space the names and ids refer to; default: the
            model's).
        default_label_space: the space used when the file names none.
    Returns:
        a LabelMapping into the file's label space (named after the file).
    Raises:
        ConfigError: naming the file, for a missing file, bad YAML, an unknown label space or
            class name, or a value that is not a non-negative integer.
    """
    path = Path(path)
    data = _read_mapping_yaml(path)
    unknown = [key for key in data if key not in ("label_space", "values")]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; valid keys: label_space, values")
    label_space = default_label_space
    if "label_space" in data:
        try:
            label_space = get_label_space(str(data["label_space"]))
        except ConfigError as error:
            raise ConfigError(f"{path}: label_space: {error}") from None
    values = data.get("values")
    if not isinstance(values, dict) or not values:
        raise ConfigError(
            f"{path}: values: expected a mapping of raw label values to class names, "
            "e.g. {0: road, 255: ignore}"
        )
    table = {
        _raw_value(path, raw): _train_id(path, raw, target, label_space)
        for raw, target in values.items()
    }
    return LabelMapping(name=str(path), label_space=label_space, table=table)


def _read_mapping_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: label mapping file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read label mapping ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where} {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a label mapping must be a YAML mapping with `values`")
    return data


def _raw_value(path: Path, raw: Any) -> int:
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ConfigError(
            f"{path}: values: {raw!r} is not a label value (expected a non-negative integer)"
        )
    return raw


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def _train_id(path: Path, raw: int, target: Any, label_space: LabelSpace) -> int:
    if target is None or (isinstance(target, str) and _normalised(target) in IGNORE_WORDS):
        return label_space.ignore_index
    if isinstance(target, bool):
        pass  # YAML reads yes/no as booleans: fall through to the error
    elif isinstance(target, int):
        if 0 <= target < label_space.num_classes or target == label_space.ignore_index:
            return target
        raise ConfigError(
            f"{path}: values.{raw}: train id {target} is outside {label_space.name} "
            f"(0..{label_space.num_classes - 1} or {label_space.ignore_index})"
        )
    elif isinstance(target, str):
        names = [_normalised(name) for name in label_space.class_names]
        if _normalised(target) in names:
            return names.index(_normalised(target))
        raise ConfigError(
            f"{path}: values.{raw}: unknown class {target!r} in {label_space.name}; known: "
            f"{', '.join(label_space.class_names)}, ignore"
        )
    raise ConfigError(
        f"{path}: values.{raw}: expected a class name, a train id or `ignore`, got {target!r}"
    )

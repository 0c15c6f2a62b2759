"""Joint image/label transforms on numpy arrays, driven by an explicit random generator.

Images are uint8 RGB arrays `[H, W, 3]`; labels are integer arrays `[H, W]` of train ids (or
None for unlabelled samples). Images are resized with PIL bicubic interpolation and labels with
nearest neighbour, so a label never gains a value that was not in it. Every random choice is
drawn from the `np.random.Generator` passed in, in a fixed order (scale, crop offsets, flip),
so that the same generator state always gives the same output.

Besides the label, a sample can carry other label-like maps (e.g. pseudo labels): the
transforms' `apply` methods take a dict of named `[H, W]` maps and treat every one exactly as
the label (same resize, scale, crop window, padding value and flip). The draws do not depend on
how many maps there are, so adding a map never changes the image or the label.

Normalisation is not done here: the segmentor normalises its own input (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

Size = tuple[int, int]  # (height, width)
# Named label-like maps that travel with an image: name -> integer array [H, W].
LabelMaps = dict[str, np.ndarray]


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize an image with PIL bicubic interpolation.

    Args:
        image: uint8 array [H, W, 3].
        size: (height, width) of the result.
    Returns:
        uint8 array [height, width, 3].
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def resize_label(label: np.ndarray, size: Size) -> np.ndarray:
    """Resize a label map with nearest-neighbour interpolation (no new values appear).

    Args:
        label: integer array [H, W].
        size: (height, width) of the result.
    Returns:
        array [height, width] of the same dtype.
    """
    height, width = size
    if label.shape[:2] == (height, width):
        return label
    if label.dtype == np.uint8:
        resized = Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST)
        return np.asarray(resized)
    # Wider labels go through PIL's 32-bit integer mode; nearest copies values exactly.
    as_int32 = Image.fromarray(label.astype(np.int32))
    resized = as_int32.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(label.dtype)


# --- Joint steps on an image and named label maps ---------------------------------------------
# The public single-label functions below wrap these, so a pseudo label and a label go through
# one code path and cannot drift apart.


def resize_maps(
    image: np.ndarray, label_maps: Mapping[str, np.ndarray], size: Size
) -> tuple[np.ndarray, LabelMaps]:
    """Resize an image [H, W, 3] (bicubic) and each label map [H, W] (nearest) to `size`."""
    return resize_image(image, size), {
        name: resize_label(label, size) for name, label in label_maps.items()
    }


def random_scale_maps(
    image: np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    scale_range: tuple[float, float],
    generator: np.random.Generator,
) -> tuple[np.ndarray, LabelMaps]:
    """`random_scale` of an image [H, W, 3] and any number of label maps [H, W] (one draw)."""
    low, high = scale_range
    factor = float(generator.uniform(low, high))
    height, width = image.shape[:2]
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return resize_maps(image, label_maps, size)


def pad_maps(
    image: np.ndarray, label_maps: Mapping[str, np.ndarray], size: Size, ignore_index: int
) -> tuple[np.ndarray, LabelMaps]:
    """`pad_to` of an image [H, W, 3] and label maps [H, W]: maps are padded with `ignore_index`."""
    height, width = image.shape[:2]
    pad_bottom = max(0, size[0] - height)
    pad_right = max(0, size[1] - width)
    if pad_bottom == 0 and pad_right == 0:
        return image, dict(label_maps)
    image = np.pad(image, ((0, pad_bottom), (0, pad_right), (0, 0)), constant_values=0)
    padded = {
        name: np.pad(label, ((0, pad_bottom), (0, pad_right)), constant_values=ignore_index)
        for name, label in label_maps.items()
    }
    return image, padded


def random_crop_maps(
    image: np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    size: Size,
    generator: np.random.Generator,
    ignore_index: int = 255,
) -> tuple[np.ndarray, LabelMaps]:
    """`random_crop` of an image [H, W, 3] and label maps [H, W], all with the same window.

    Returns:
        image [height, width, 3] and each map [height, width] (two draws: top, then left).
    """
    image, label_maps = pad_maps(image, label_maps, size, ignore_index)
    height, width = image.shape[:2]
    top = int(generator.integers(0, height - size[0] + 1))
    left = int(generator.integers(0, width - size[1] + 1))
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    return image[window], {name: label[window] for name, label in label_maps.items()}


def random_horizontal_flip_maps(
    image: np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    generator: np.random.Generator,
    probability: float = 0.5,
) -> tuple[np.ndarray, LabelMaps]:
    """Mirror an image [H, W, 3] and every label map [H, W] together (one draw)."""
    if generator.random() < probability:
        return image[:, ::-1], {name: label[:, ::-1] for name, label in label_maps.items()}
    return image, dict(label_maps)


# --- Single-label functions -----------------------------------------------------------------


def _as_maps(label: np.ndarray | None) -> LabelMaps:
    return {} if label is None else {"label": label}


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: Size
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image (bicubic) and its label (nearest) to the same (height, width)."""
    image, label_maps = resize_maps(image, _as_maps(label), size)
    return image, label_maps.get("label")


def random_scale(
    image: np.ndarray,
    label: np.ndarray | None,
    scale_range: tuple[float, float],
    generator: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale by a factor drawn uniformly from `scale_range`.

    Args:
        image: uint8 array [H, W, 3].
        label: integer array [H, W] or None.
        scale_range: (low, high) factors; the new size is round(H * f), round(W * f), at least 1.
        generator: the source of the factor (one draw).
    Returns:
        the rescaled image [H', W', 3] and label [H', W'] (or None).
    """
    image, label_maps = random_scale_maps(image, _as_maps(label), scale_range, generator)
    return image, label_maps.get("label")


def pad_to(
    image: np.ndarray, label: np.ndarray | None, size: Size, ignore_index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad at the bottom and right to at least `size`: image with 0, label with `ignore_index`."""
    image, label_maps = pad_maps(image, _as_maps(label), size, ignore_index)
    return image, label_maps.get("label")


def random_crop(
    image: np.ndarray,
    label: np.ndarray | None,
    size: Size,
    generator: np.random.Generator,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop a random window of `size`, padding first when the input is smaller.

    Args:
        image: uint8 array [H, W, 3].
        label: integer array [H, W] or None.
        size: (height, width) of the window.
        generator: the source of the offsets (two draws: top, then left).
        ignore_index: the value of padded label pixels.
    Returns:
        image [height, width, 3] and label [height, width] (or None).
    """
    image, label_maps = random_crop_maps(image, _as_maps(label), size, generator, ignore_index)
    return image, label_maps.get("label")


def random_horizontal_flip(
    image: np.ndarray,
    label: np.ndarray | None,
    generator: np.random.Generator,
    probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror image and label together with the given probability (one draw)."""
    image, label_maps = random_horizontal_flip_maps(image, _as_maps(label), generator, probability)
    return image, label_maps.get("label")


# --- Dataset transforms ---------------------------------------------------------------------


@dataclass(frozen=True)
class TrainTransform:
    """The training augmentation of a dataset config: resize, random scale, crop, flip.

    Attributes:
        resize: (height, width) every sample is first resized to, or None.
        random_scale: (low, high) factor range applied after `resize`, or None.
        crop: (height, width) random crop, padded when the input is smaller, or None.
        flip: horizontal flip with probability 0.5.
        ignore_index: value of padded pixels in every label map.
    """

    resize: Size | None = None
    random_scale: tuple[float, float] | None = None
    crop: Size | None = None
    flip: bool = False
    ignore_index: int = 255

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply the configured steps in order to an image and its label.

        Args:
            image: uint8 array [H, W, 3].
            label: integer array [H, W] of train ids, or None.
            generator: drives the random steps (same state -> same output).
        Returns:
            image [H', W', 3] and label [H', W'] (or None), C-contiguous.
        """
        image, label_maps = self.apply(image, _as_maps(label), generator)
        return image, label_maps.get("label")

    def apply(
        self,
        image: np.ndarray,
        label_maps: Mapping[str, np.ndarray],
        generator: np.random.Generator,
    ) -> tuple[np.ndarray, LabelMaps]:
        """Apply the configured steps in order to an image and any number of label maps.

        Every map goes through the same resize, scale, crop window (padded with
        `ignore_index`) and flip as the image. The draws are the same whatever the maps.

        Args:
            image: uint8 array [H, W, 3].
            label_maps: name -> integer array [H, W] (e.g. "label", "pseudo_label").
            generator: drives the random steps (same state -> same output).
        Returns:
            image [H', W', 3] and name -> map [H', W'] with the same names, C-contiguous.
        """
        maps = dict(label_maps)
        if self.resize is not None:
            image, maps = resize_maps(image, maps, self.resize)
        if self.random_scale is not None:
            image, maps = random_scale_maps(image, maps, self.random_scale, generator)
        if self.crop is not None:
            image, maps = random_crop_maps(image, maps, self.crop, generator, self.ignore_index)
        if self.flip:
            image, maps = random_horizontal_flip_maps(image, maps, generator)
        return _contiguous(image), {name: _contiguous(label) for name, label in maps.items()}


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic evaluation sizing (REFERENCE §5).

    The image is resized to `image_size` (bicubic) when given; the label (and every other label
    map) stays at its native resolution unless `label_size` is given (nearest).
    """

    image_size: Size | None = None
    label_size: Size | None = None

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Resize image [H, W, 3] and label [H, W] (or None); `generator` is not used."""
        image, label_maps = self.apply(image, _as_maps(label), generator)
        return image, label_maps.get("label")

    def apply(
        self,
        image: np.ndarray,
        label_maps: Mapping[str, np.ndarray],
        generator: np.random.Generator,
    ) -> tuple[np.ndarray, LabelMaps]:
        """Resize image [H, W, 3] and each label map [H, W] as `__call__` does the label.

        Maps stay aligned with the label, not the image: the logits are upsampled to the label's
        size for scoring, and a pseudo label is scored or trained against the same pixels.
        """
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        maps = dict(label_maps)
        if self.label_size is not None:
            maps = {name: resize_label(label, self.label_size) for name, label in maps.items()}
        return _contiguous(image), {name: _contiguous(label) for name, label in maps.items()}


def _contiguous(array: np.ndarray) -> np.ndarray:
    # Flips and crops give views; torch.from_numpy needs positive strides.
    return np.ascontiguousarray(array)

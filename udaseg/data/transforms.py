"""Joint image/label transforms on numpy arrays, driven by an explicit random generator.

Images are uint8 RGB arrays `[H, W, 3]`; labels are integer arrays `[H, W]` of train ids (or
None for unlabelled samples). Images are resized with PIL bicubic interpolation and labels with
nearest neighbour, so a label never gains a value that was not in it. Every random choice is
drawn from the `np.random.Generator` passed in, in a fixed order (scale, crop offsets, flip),
so that the same generator state always gives the same output.

Normalisation is not done here: the segmentor normalises its own input (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

Size = tuple[int, int]  # (height, width)


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


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: Size
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image (bicubic) and its label (nearest) to the same (height, width)."""
    return resize_image(image, size), None if label is None else resize_label(label, size)


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
    low, high = scale_range
    factor = float(generator.uniform(low, high))
    height, width = image.shape[:2]
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return resize_pair(image, label, size)


def pad_to(
    image: np.ndarray, label: np.ndarray | None, size: Size, ignore_index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad at the bottom and right to at least `size`: image with 0, label with `ignore_index`."""
    height, width = image.shape[:2]
    pad_bottom = max(0, size[0] - height)
    pad_right = max(0, size[1] - width)
    if pad_bottom == 0 and pad_right == 0:
        return image, label
    image = np.pad(image, ((0, pad_bottom), (0, pad_right), (0, 0)), constant_values=0)
    if label is not None:
        label = np.pad(label, ((0, pad_bottom), (0, pad_right)), constant_values=ignore_index)
    return image, label


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
    image, label = pad_to(image, label, size, ignore_index)
    height, width = image.shape[:2]
    top = int(generator.integers(0, height - size[0] + 1))
    left = int(generator.integers(0, width - size[1] + 1))
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    image = image[window]
    if label is not None:
        label = label[window]
    return image, label


def random_horizontal_flip(
    image: np.ndarray,
    label: np.ndarray | None,
    generator: np.random.Generator,
    probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror image and label together with the given probability (one draw)."""
    if generator.random() < probability:
        image = image[:, ::-1]
        if label is not None:
            label = label[:, ::-1]
    return image, label


@dataclass(frozen=True)
class TrainTransform:
    """The training augmentation of a dataset config: resize, random scale, crop, flip.

    Attributes:
        resize: (height, width) every sample is first resized to, or None.
        random_scale: (low, high) factor range applied after `resize`, or None.
        crop: (height, width) random crop, padded when the input is smaller, or None.
        flip: horizontal flip with probability 0.5.
        ignore_index: label value of padded pixels.
    """

    resize: Size | None = None
    random_scale: tuple[float, float] | None = None
    crop: Size | None = None
    flip: bool = False
    ignore_index: int = 255

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply the configured steps in order.

        Args:
            image: uint8 array [H, W, 3].
            label: integer array [H, W] of train ids, or None.
            generator: drives the random steps (same state -> same output).
        Returns:
            image [H', W', 3] and label [H', W'] (or None), C-contiguous.
        """
        if self.resize is not None:
            image, label = resize_pair(image, label, self.resize)
        if self.random_scale is not None:
            image, label = random_scale(image, label, self.random_scale, generator)
        if self.crop is not None:
            image, label = random_crop(image, label, self.crop, generator, self.ignore_index)
        if self.flip:
            image, label = random_horizontal_flip(image, label, generator)
        return _contiguous(image), None if label is None else _contiguous(label)


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic evaluation sizing (REFERENCE §5).

    The image is resized to `image_size` (bicubic) when given; the label stays at its native
    resolution unless `label_size` is given (nearest).
    """

    image_size: Size | None = None
    label_size: Size | None = None

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Resize image [H, W, 3] and label [H, W] (or None); `generator` is not used."""
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        if label is not None and self.label_size is not None:
            label = resize_label(label, self.label_size)
        return _contiguous(image), None if label is None else _contiguous(label)


def _contiguous(array: np.ndarray) -> np.ndarray:
    # Flips and crops give views; torch.from_numpy needs positive strides.
    return np.ascontiguousarray(array)

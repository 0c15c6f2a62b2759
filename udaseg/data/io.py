"""Reading and writing the image and label files of segmentation datasets.

Three readers cover every layout udaseg supports:

- `read_image`: any image Pillow decodes, returned as uint8 RGB `[H, W, 3]`.
- `read_label`: single-channel or palettised label images as their stored integer values
  `[H, W]`. Palettised ("P") PNGs are read as their palette indices and never converted to RGB:
  GTA5 labels are palettised PNGs whose indices are Cityscapes labelIds (REFERENCE §7.13).
- `read_png16`: PNGs with 16-bit samples, read through pypng as `[H, W, C]` uint16. Pillow
  decodes 16-bit RGB PNGs to 8 bits by keeping the high byte, which turns SYNTHIA's class ids
  (stored in the first channel of 16-bit `GT/LABELS/*.png`) into zeros (REFERENCE §7.6).

Every read failure raises `DataError` with a one-line message naming the file. The writers are
small helpers for tests, fake datasets and prediction outputs; they create parent directories.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import png
from PIL import Image

from udaseg.errors import DataError

# Errors Pillow and pypng raise for missing, truncated or malformed files. Pillow reports some
# corrupt PNGs with SyntaxError and some truncated streams with EOFError.
_READ_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
    png.Error,
)

# Pillow modes whose pixels are one stored integer each.
_SINGLE_CHANNEL_MODES = {"P", "L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"}


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (some decoders put newlines in theirs)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _read_failure(path: str | Path, what: str, error: BaseException) -> DataError:
    if isinstance(error, FileNotFoundError):
        return DataError(f"{path}: {what} file not found")
    if isinstance(error, IsADirectoryError):
        return DataError(f"{path}: expected a {what} file, found a directory")
    return DataError(f"{path}: cannot read {what} ({_one_line(error)})")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB.

    Grey, palettised, RGBA and other modes are converted to RGB (alpha is dropped).

    Args:
        path: an image file Pillow can decode (PNG, JPEG, ...).
    Returns:
        uint8 array [H, W, 3].
    Raises:
        DataError: the file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.array(rgb, dtype=np.uint8)
    except _READ_ERRORS as error:
        raise _read_failure(path, "image", error) from None


def read_label(path: str | Path) -> np.ndarray:
    """Read a label image as its stored integer values.

    Palettised PNGs give their palette indices (never the palette colours); "L", "1", "I" and
    16-bit grey ("I;16") images give their values.

    Args:
        path: a single-channel or palettised label image.
    Returns:
        integer array [H, W]: uint8 for 8-bit images, uint16 or int32 for 16/32-bit ones.
    Raises:
        DataError: the file is missing, cannot be decoded, or has colour channels.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in _SINGLE_CHANNEL_MODES:
                raise DataError(
                    f"{path}: expected a single-channel or palettised label image, got mode {mode}"
                )
            image.load()
            values = np.array(image)
    except _READ_ERRORS as error:
        raise _read_failure(path, "label", error) from None
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    return values


def read_png16(path: str | Path) -> np.ndarray:
    """Read a PNG's stored samples at full bit depth, through pypng.

    Works for 1-, 2-, 4-, 8- and 16-bit PNGs of any colour type. Palettised PNGs give their
    indices (one channel); samples below 8 bits are unpacked, one value per sample.

    Args:
        path: a PNG file.
    Returns:
        uint16 array [H, W, C] with C = 1 (grey or palette), 2 (grey + alpha), 3 (RGB) or
        4 (RGBA), in the file's channel order.
    Raises:
        DataError: the file is missing or is not a readable PNG.
    """
    try:
        with open(path, "rb") as handle:
            width, height, rows, info = png.Reader(file=handle).read()
            channels = info["planes"]
            values = np.empty((height, width * channels), dtype=np.uint16)
            row_count = 0
            for row_index, row in enumerate(rows):
                values[row_index] = row
                row_count += 1
    except _READ_ERRORS as error:
        raise _read_failure(path, "PNG", error) from None
    if row_count != height:
        raise DataError(f"{path}: cannot read PNG (expected {height} rows, found {row_count})")
    return values.reshape(height, width, channels)


# --- Writers ---------------------------------------------------------------------------------


def _parent_created(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write an array as a PNG.

    Args:
        path: destination; parent directories are created.
        array: uint8 [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA), written with Pillow;
            or uint16 [H, W] or [H, W, C] with C in 1..4, written with pypng at 16 bits.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.ndim not in (2, 3) or channels not in (1, 2, 3, 4):
        raise ValueError(f"write_png: expected [H, W] or [H, W, 1..4], got shape {array.shape}")
    path = _parent_created(path)
    if array.dtype == np.uint8:
        if channels == 2:
            raise ValueError("write_png: uint8 grey + alpha is not supported")
        Image.fromarray(array).save(path)
        return
    if array.dtype == np.uint16:
        height, width = array.shape[:2]
        writer = png.Writer(
            width,
            height,
            greyscale=channels <= 2,
            alpha=channels in (2, 4),
            bitdepth=16,
        )
        with open(path, "wb") as handle:
            writer.write(handle, array.reshape(height, width * channels))
        return
    raise ValueError(f"write_png: expected uint8 or uint16, got {array.dtype}")


def write_palettised_png(
    path: str | Path, indices: np.ndarray, palette: Sequence[Sequence[int]]
) -> None:
    """Write a palettised ("P" mode) PNG, as GTA5 stores its labels.

    Args:
        path: destination; parent directories are created.
        indices: integer array [H, W] with values 0..255, the stored pixel values.
        palette: up to 256 RGB triplets; index i is drawn with palette[i]. The palette is padded
            to 256 entries so that every index is valid and Pillow writes 8-bit indices.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or (indices.size and (indices.min() < 0 or indices.max() > 255)):
        raise ValueError("write_palettised_png: expected indices [H, W] with values 0..255")
    colours = [int(channel) for colour in palette for channel in colour]
    if len(colours) > 256 * 3 or len(colours) % 3:
        raise ValueError("write_palettised_png: expected at most 256 RGB triplets")
    colours += [0] * (256 * 3 - len(colours))
    # putpalette turns the "L" image into a "P" one that keeps the values as indices.
    image = Image.fromarray(indices.astype(np.uint8))
    image.putpalette(colours)
    image.save(_parent_created(path))

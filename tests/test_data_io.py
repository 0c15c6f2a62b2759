"""Readers and writers of udaseg.data.io, on small files written here."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from udaseg.data.io import read_image, read_label, read_png16, write_palettised_png, write_png
from udaseg.errors import DataError


def _assert_one_line_naming(error: pytest.ExceptionInfo, path) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


# --- read_image ------------------------------------------------------------------------------


def test_read_image_rgb_roundtrip(tmp_path):
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)  # [1, 3, 3]
    write_png(tmp_path / "a" / "b" / "rgb.png", image)  # parent folders are created
    result = read_image(tmp_path / "a" / "b" / "rgb.png")
    assert result.dtype == np.uint8
    assert result.shape == (1, 3, 3)
    np.testing.assert_array_equal(result, image)


def test_read_image_converts_grey_and_rgba_to_rgb(tmp_path):
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    write_png(tmp_path / "grey.png", grey)
    result = read_image(tmp_path / "grey.png")
    assert result.shape == (2, 2, 3)
    for channel in range(3):
        np.testing.assert_array_equal(result[:, :, channel], grey)

    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: the colour must still come back
    rgba[0, 1] = (40, 50, 60, 255)
    write_png(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), [[[10, 20, 30], [40, 50, 60]]])


def test_read_image_palettised_gives_colours_and_jpeg_reads(tmp_path):
    write_palettised_png(tmp_path / "p.png", np.array([[0, 1]]), [(9, 8, 7), (1, 2, 3)])
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[9, 8, 7], [1, 2, 3]]])
    Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(tmp_path / "x.jpg")
    jpeg = read_image(tmp_path / "x.jpg")
    assert jpeg.shape == (8, 8, 3)
    assert abs(int(jpeg[4, 4, 0]) - 128) <= 2


def test_read_image_missing_file(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(DataError, match="file not found") as error:
        read_image(path)
    _assert_one_line_naming(error, path)


def test_read_image_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"this is not\nan image")
    with pytest.raises(DataError, match="cannot read image") as error:
        read_image(path)
    _assert_one_line_naming(error, path)


def test_read_image_truncated_png(tmp_path):
    path = tmp_path / "truncated.png"
    write_png(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        read_image(path)
    _assert_one_line_naming(error, path)


def test_read_image_directory(tmp_path):
    with pytest.raises(DataError, match="directory") as error:
        read_image(tmp_path)
    _assert_one_line_naming(error, tmp_path)


# --- read_label ------------------------------------------------------------------------------


def test_read_label_palettised_gives_indices_not_colours(tmp_path):
    # GTA5-style: indices are Cityscapes labelIds, colours are the class colours.
    indices = np.array([[7, 8, 34], [0, 26, 33]], dtype=np.uint8)
    palette = [(0, 0, 0)] * 35
    palette[7] = (128, 64, 128)
    palette[8] = (244, 35, 232)
    palette[26] = (0, 0, 142)
    palette[33] = (119, 11, 32)
    palette[34] = (50, 60, 70)
    path = tmp_path / "labels" / "00001.png"
    write_palettised_png(path, indices, palette)
    assert Image.open(path).mode == "P"
    # Reading through RGB would give e.g. (128, 64, 128) for road: not what a label is.
    assert tuple(read_image(path)[0, 0]) == (128, 64, 128)
    result = read_label(path)
    assert result.shape == (2, 3)
    np.testing.assert_array_equal(result, [[7, 8, 34], [0, 26, 33]])


def test_read_label_grey_and_16_bit(tmp_path):
    write_png(tmp_path / "l.png", np.array([[0, 11], [255, 3]], dtype=np.uint8))
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), [[0, 11], [255, 3]])
    values = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    write_png(tmp_path / "l16.png", values)
    result = read_label(tmp_path / "l16.png")
    np.testing.assert_array_equal(result, [[0, 300], [1000, 65535]])


def test_read_label_32_bit_mode_i(tmp_path):
    Image.fromarray(np.array([[70000, 5]], dtype=np.int32)).save(tmp_path / "i.tif")
    np.testing.assert_array_equal(read_label(tmp_path / "i.tif"), [[70000, 5]])


def test_read_label_rejects_rgb(tmp_path):
    path = tmp_path / "rgb_label.png"
    write_png(path, np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="expected a single-channel or palettised label image") as e:
        read_label(path)
    _assert_one_line_naming(e, path)


def test_read_label_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="label file not found") as error:
        read_label(tmp_path / "nope.png")
    _assert_one_line_naming(error, tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot read label") as error:
        read_label(tmp_path / "bad.png")
    _assert_one_line_naming(error, tmp_path / "bad.png")


# --- read_png16 ------------------------------------------------------------------------------


def test_read_png16_keeps_all_16_bits_of_every_channel(tmp_path):
    # SYNTHIA-style: class ids in channel 0, values above 255 in the others.
    label = np.zeros((2, 2, 3), dtype=np.uint16)
    label[:, :, 0] = [[22, 3], [8, 0]]
    label[:, :, 1] = [[1000, 300], [65535, 256]]
    label[:, :, 2] = [[4000, 1], [2, 999]]
    path = tmp_path / "GT" / "LABELS" / "0000000.png"
    write_png(path, label)
    result = read_png16(path)
    assert result.dtype == np.uint16
    assert result.shape == (2, 2, 3)
    np.testing.assert_array_equal(result, label)
    # Why pypng: Pillow keeps only the high byte of 16-bit RGB (22 >> 8 == 0).
    assert tuple(np.asarray(Image.open(path))[0, 0]) == (0, 1000 >> 8, 4000 >> 8)


def test_read_png16_8_bit_grey_rgb_and_palette(tmp_path):
    write_png(tmp_path / "g.png", np.array([[1, 2, 250]], dtype=np.uint8))
    grey = read_png16(tmp_path / "g.png")
    assert grey.shape == (1, 3, 1) and grey.dtype == np.uint16
    np.testing.assert_array_equal(grey[:, :, 0], [[1, 2, 250]])

    write_png(tmp_path / "c.png", np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    np.testing.assert_array_equal(read_png16(tmp_path / "c.png"), [[[1, 2, 3], [4, 5, 6]]])

    write_palettised_png(tmp_path / "p.png", np.array([[5, 0]]), [(200, 200, 200)] * 6)
    np.testing.assert_array_equal(read_png16(tmp_path / "p.png")[:, :, 0], [[5, 0]])

    write_png(tmp_path / "g16.png", np.array([[0, 40000]], dtype=np.uint16))
    np.testing.assert_array_equal(read_png16(tmp_path / "g16.png")[:, :, 0], [[0, 40000]])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def test_read_png16_undoes_every_row_filter(tmp_path):
    """A 16-bit RGB PNG whose rows use filters None, Sub, Up, Average and Paeth in turn."""
    generator = np.random.default_rng(3)
    height, width, bytes_per_pixel = 5, 4, 6
    values = generator.integers(0, 65536, size=(height, width, 3)).astype(np.uint16)
    rows = np.frombuffer(values.astype(">u2").tobytes(), np.uint8).reshape(height, -1)
    rows = rows.astype(np.int64)
    encoded = b""
    for row_index in range(height):
        row = rows[row_index]
        above = rows[row_index - 1] if row_index else np.zeros_like(row)
        left = np.concatenate([np.zeros(bytes_per_pixel, np.int64), row[:-bytes_per_pixel]])
        upper_left = np.concatenate([np.zeros(bytes_per_pixel, np.int64), above[:-bytes_per_pixel]])
        filter_type = row_index % 5
        if filter_type == 0:
            predicted = np.zeros_like(row)
        elif filter_type == 1:
            predicted = left
        elif filter_type == 2:
            predicted = above
        elif filter_type == 3:
            predicted = (left + above) // 2
        else:
            estimate = left + above - upper_left
            distance_left = np.abs(estimate - left)
            distance_above = np.abs(estimate - above)
            distance_upper_left = np.abs(estimate - upper_left)
            predicted = np.where(
                (distance_left <= distance_above) & (distance_left <= distance_upper_left),
                left,
                np.where(distance_above <= distance_upper_left, above, upper_left),
            )
        encoded += bytes([filter_type]) + ((row - predicted) % 256).astype(np.uint8).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(encoded))
        + _png_chunk(b"IEND", b"")
    )
    path = tmp_path / "filtered.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_png16(path), values)


def test_read_png16_errors(tmp_path):
    with pytest.raises(DataError, match="PNG file not found") as error:
        read_png16(tmp_path / "none.png")
    _assert_one_line_naming(error, tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read PNG") as error:
        read_png16(tmp_path / "bad.png")
    _assert_one_line_naming(error, tmp_path / "bad.png")


# --- writers ---------------------------------------------------------------------------------


def test_write_png_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        write_png(tmp_path / "five.png", np.zeros((2, 2, 5), dtype=np.uint8))
    with pytest.raises(ValueError):
        write_palettised_png(tmp_path / "p.png", np.array([[256]]), [(0, 0, 0)])

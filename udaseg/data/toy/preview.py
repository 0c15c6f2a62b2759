"""A picture of a written toy benchmark: source and target images beside their coloured labels.

The preview reads the files back through `udaseg.data.io` and the same raw-value mappings the
dataset readers use, so it shows what a model will be trained on, not what the generator meant
to write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from udaseg.data.io import read_image, read_label, read_png16, write_png
from udaseg.data.label_spaces import (
    CITYSCAPES19,
    CITYSCAPES_LABEL_IDS,
    GTA5_LABEL_IDS,
    SYNTHIA_IDS,
)
from udaseg.data.toy.generate import read_manifest, source_paths, target_paths

HEADER = 14  # pixels of caption above the grid
GAP = 4  # pixels between the source and the target halves


def preview_shape(size: tuple[int, int], rows: int) -> tuple[int, int]:
    """(height, width) of the preview of `rows` rows of images of `size` (height, width)."""
    height, width = size
    return HEADER + rows * height, 4 * width + GAP


def preview_grid(directory: str | Path, rows: int = 4) -> np.ndarray:
    """Compose the preview of a toy benchmark directory.

    Each row shows a source image, its label, a target val image and its label (train ids in
    the Cityscapes palette, void black). Rows are capped by the number of images available.

    Returns:
        uint8 [HEADER + rows * H, 4 * W + GAP, 3].
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    height, width = manifest["size"]
    layout = manifest["layout"]
    counts = manifest["counts"]
    rows = max(1, min(rows, max(counts["source"], counts["target_val"], 1)))
    total_height, total_width = preview_shape((height, width), rows)
    grid = np.full((total_height, total_width, 3), 255, dtype=np.uint8)
    source_mapping = SYNTHIA_IDS if layout == "synthia" else GTA5_LABEL_IDS
    for row in range(rows):
        top = HEADER + row * height
        if row < counts["source"]:
            image_path, label_path = source_paths(directory, layout, row)
            raw = read_png16(label_path)[:, :, 0] if layout == "synthia" else read_label(label_path)
            labels = source_mapping.apply(raw, str(label_path))
            grid[top : top + height, 0:width] = read_image(image_path)
            grid[top : top + height, width : 2 * width] = CITYSCAPES19.colorize(labels)
        if row < counts["target_val"]:
            image_path, label_path = target_paths(directory, "val", row, counts["target_val"])
            labels = CITYSCAPES_LABEL_IDS.apply(read_label(label_path), str(label_path))
            left = 2 * width + GAP
            grid[top : top + height, left : left + width] = read_image(image_path)
            grid[top : top + height, left + width : left + 2 * width] = CITYSCAPES19.colorize(
                labels
            )
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    source_name = "SYNTHIA" if layout == "synthia" else "GTA5"
    draw.text((2, 1), f"source ({source_name} layout)", fill=(0, 0, 0))
    draw.text((2 * width + GAP + 2, 1), "target val (Cityscapes layout)", fill=(0, 0, 0))
    return np.asarray(picture)


def write_preview(directory: str | Path, path: str | Path, rows: int = 4) -> Path:
    """Write `preview_grid(directory, rows)` as a PNG; returns the path."""
    path = Path(path)
    write_png(path, preview_grid(directory, rows))
    return path

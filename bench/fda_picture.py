"""A picture of FDA on toy images: source, target, and the source translated at each beta.

Each row pairs a source image with a target train image (in the order of the datasets, from
`--first`) and shows `udaseg.translation.fda_source_to_target` at the paper's betas (0.01, 0.05,
0.09 by default), clamped to 0..255 for display only (training feeds the unclamped values). The
window half-size b = floor(min(H, W) x beta) of each column is in its caption: on the toy's
64x128 training crops (`--crop`) beta 0.01 gives b = 0, i.e. no change.

    python bench/fda_picture.py --out runs/pictures/fda_toy.png [--rows 4] [--crop]
        [--config toy/source_only.yaml] [--window corners|centered]

The images come from the config's `data.source` and `data.target` (the cached toy benchmark by
default, generated on first use), read without augmentation; `--crop` takes their central
64x128 region, the size the toy configs train on.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from udaseg.config import load_config
from udaseg.data.datasets import build_dataset
from udaseg.files import atomic_write
from udaseg.translation import FDA_WINDOWS, fda_source_to_target, fda_window_size

CAPTION = 14  # pixels of caption above each column
GAP = 4  # pixels between columns and rows


def load_images(config_path: str, role: str, count: int, first: int) -> torch.Tensor:
    """`count` images of the config's `data.<role>` from index `first`, as float [N, 3, H, W]."""
    config = load_config(config_path)
    section = getattr(config.data, role)
    # No random crop or flip: the picture shows whole images (or their centre, see --crop).
    plain = dataclasses.replace(section, crop=None, flip=False, random_scale=None)
    dataset = build_dataset(plain, config.data.label_space, role)
    indices = [(first + offset) % len(dataset) for offset in range(count)]
    return torch.stack([dataset[index]["image"] for index in indices]).float()


def centre_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = images.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[..., top : top + size[0], left : left + size[1]]


def picture(
    source: torch.Tensor, target: torch.Tensor, betas: list[float], window: str
) -> np.ndarray:
    """The grid: one row per (source, target) pair of float [N, 3, H, W] 0..255 images.

    Returns:
        uint8 [CAPTION + N * (H + GAP), (2 + len(betas)) * (W + GAP), 3].
    """
    height, width = source.shape[-2:]
    columns = [("source", source), ("target", target)]
    for beta in betas:
        size = fda_window_size(height, width, beta)
        translated = fda_source_to_target(source, target, beta, window)
        columns.append((f"beta {beta:g} (b={size})", translated))
    return draw_grid(columns)


def draw_grid(columns: list[tuple[str, torch.Tensor]]) -> np.ndarray:
    """Captioned columns of float [N, 3, H, W] 0..255 images (clamped for display), one per row.

    Returns:
        uint8 [CAPTION + N * (H + GAP), len(columns) * (W + GAP), 3].
    """
    rows, _, height, width = columns[0][1].shape
    canvas = Image.new(
        "RGB", (len(columns) * (width + GAP), CAPTION + rows * (height + GAP)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    for column, (caption, images) in enumerate(columns):
        left = column * (width + GAP)
        draw.text((left + 2, 1), caption, fill=(0, 0, 0))
        for row in range(rows):
            pixels = images[row].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(pixels), (left, CAPTION + row * (height + GAP)))
    return np.asarray(canvas)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--config", default="toy/source_only.yaml", help="names data.source/target")
    parser.add_argument("--rows", type=int, default=4, help="(source, target) pairs to show")
    parser.add_argument("--first", type=int, default=0, help="index of the first image")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.05, 0.09])
    parser.add_argument("--window", choices=FDA_WINDOWS, default="corners")
    parser.add_argument(
        "--crop", action="store_true", help="show the central 64x128 crop (the toy training size)"
    )
    args = parser.parse_args()
    source = load_images(args.config, "source", args.rows, args.first)
    target = load_images(args.config, "target", args.rows, args.first)
    if target.shape[-2:] != source.shape[-2:]:
        target = torch.nn.functional.interpolate(
            target, size=tuple(source.shape[-2:]), mode="bilinear", align_corners=False
        )
    if args.crop:
        source, target = centre_crop(source, (64, 128)), centre_crop(target, (64, 128))
    grid = picture(source, target, args.betas, args.window)
    out = Path(args.out)
    atomic_write(out, lambda stream: Image.fromarray(grid).save(stream, format="PNG"))
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()

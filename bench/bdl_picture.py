"""A picture of BDL's translation model F on toy images after each round: F(S) and F^-1(T).

Columns: source S, F^(k)(S) for each given `bdl_translation` checkpoint (one per round of the
recipe, `translation_1`, `translation_2`), target T, F^-1^(k)(T) for each checkpoint. Rows are
images of the config's `data.source` / `data.target` from `--first`, unaugmented.

    python bench/bdl_picture.py --out runs/pictures/bdl_toy.png \
        --generator round1=runs/v2/toy_bdl/seed0/translation_1/checkpoints/last.pt \
        --generator round2=runs/v2/toy_bdl/seed0/translation_2/checkpoints/last.pt [--crop]

The generators are fully convolutional, so whole toy images (128x256) are translated although F
trained on 64x128 crops; `--crop` shows the central 64x128 region instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from fda_picture import centre_crop, draw_grid, load_images
from PIL import Image

from udaseg.engine.loading import load_for_inference
from udaseg.errors import ConfigError
from udaseg.files import atomic_write


def load_translator(checkpoint: str):
    """The `bdl_translation` method of a checkpoint (its `translate(images, direction)`)."""
    loaded = load_for_inference(checkpoint, None, None, [], torch.device("cpu"))
    if not hasattr(loaded.method, "translate"):
        raise ConfigError(f"--generator {checkpoint}: not a bdl_translation checkpoint")
    return loaded.method


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument(
        "--generator",
        action="append",
        required=True,
        metavar="LABEL=CKPT",
        help="a bdl_translation checkpoint and its column label (repeat, one per round)",
    )
    parser.add_argument("--config", default="toy/source_only.yaml", help="names data.source/target")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--crop", action="store_true", help="show the central 64x128 crop")
    args = parser.parse_args()
    source = load_images(args.config, "source", args.rows, args.first)
    target = load_images(args.config, "target", args.rows, args.first)
    if args.crop:
        source, target = centre_crop(source, (64, 128)), centre_crop(target, (64, 128))
    forward_columns, inverse_columns = [], []
    with torch.inference_mode():
        for entry in args.generator:
            label, separator, checkpoint = entry.partition("=")
            if not separator:
                label, checkpoint = Path(entry).parent.parent.name, entry
            method = load_translator(checkpoint)
            forward_columns.append((f"F {label}", method.translate(source, "source_to_target")))
            inverse_columns.append((f"F^-1 {label}", method.translate(target, "target_to_source")))
    columns = [("source", source), *forward_columns, ("target", target), *inverse_columns]
    grid = draw_grid(columns)
    out = Path(args.out)
    atomic_write(out, lambda stream: Image.fromarray(grid).save(stream, format="PNG"))
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
